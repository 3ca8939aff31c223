"""``cvpr24 hcc cluster | embed | evaluate``.

    cvpr24 hcc cluster --input soc-sign.txt --format snap --out labels.csv \\
        --linkage-out Z.npy --dendrogram tree.png
    cvpr24 hcc cluster --input X.csv --format features --shift inv_k --n-clusters 3 --out labels.csv
    cvpr24 hcc embed --input D.npy --method tpe --dim 20 --out Y.npy
    cvpr24 hcc evaluate --labels labels.csv --truth y.csv [--input D.npy]

Every output is written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from cvpr24.common.argtypes import positive_int

FORMATS = ("auto", "npy", "npz", "matrix-csv", "snap", "csv", "features")
TPE_DIM = 10  # recommended TPE dimension, measured: docs/hcc.md, "Choosing the TPE dimension"
# dense N x N matrices each command holds at its peak (working D, kernel copy, tree distances,
# the double-centred matrix of MDS...): the memory estimate printed before a --force run
DENSE_COPIES = {"cluster": 2, "tpe": 3, "minimax": 4, "evaluate": 1}
# the library names its arguments; the command line names its flags
API_TO_FLAGS = (
    ("pass zero_diagonal=True", "pass --zero-diagonal"),
    ("pass force=True", "pass --force"),
    ("pass metric='euclidean' and a shift instead of metric='precomputed'",
     "pass --format features and --shift"),
    ("shift='inv_k' needs an integer n_clusters", "--shift inv_k needs an integer --n-clusters"),
    ("shift='quantile:<q>'", "--shift quantile:<q>"),
    ("shift is required for feature input", "--format features needs --shift"),
    ("shift must", "--shift must"),
    ("n_components", "--dim"),
    ("n_clusters=", "--n-clusters "),
    ("metric: ", "--metric: "),
)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("cluster", help="hierarchical correlation clustering of signed data",
                       description="Build the HCC dendrogram of a signed dissimilarity (or of "
                                   "shifted feature distances) and write flat labels.")
    _add_input(p)
    p.add_argument("--linkage", default="sum", choices=["sum", "avg", "max", "min"],
                   help="sum = HCC (default); avg/max/min = average/complete/single linkage")
    p.add_argument("--n-clusters", default="cc", type=_n_clusters,
                   help="an integer K (level cut), 'cc' (lowest CC cost on the path, default) "
                        "or 'first_positive'")
    p.add_argument("--out", required=True, help="labels CSV (id,label)")
    p.add_argument("--linkage-out", help="write the raw linkage matrix Z (N-1, 4) as .npy")
    p.add_argument("--dendrogram", help="write a dendrogram PNG")
    p.add_argument("--heights", default="level", choices=["level", "raw"],
                   help="dendrogram y axis: merge level (default) or raw signed merge cost")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("embed", help="tree-preserving or minimax embedding as vectors",
                       description="Embed the objects so that squared distances reproduce the HCC "
                                   "tree's levels (tpe) or the minimax dissimilarities (minimax).")
    _add_input(p)
    p.add_argument("--method", default="tpe", choices=["tpe", "minimax"])
    p.add_argument("--dim", type=positive_int, default=None,
                   help=f"embedding dimension (default {TPE_DIM}, or N-1 when N <= {TPE_DIM}: the "
                        "best dimension for a GMM on the level TPE in our sweep, docs/hcc.md)")
    p.add_argument("--linkage", default="sum", choices=["sum", "avg", "max", "min"],
                   help="tree for --method tpe (default sum)")
    p.add_argument("--tree-distance", default="level", choices=["level", "depth", "height"])
    p.add_argument("--out", required=True, help="embedding .npy (N, dim)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("evaluate", help="ARI / AMI / V-measure (and CC cost) of labels vs truth",
                       description="Compare predicted labels with ground truth, matched by id "
                                   "(by position only when a file has no id column); with "
                                   "--input also the CC cost of both on the signed dissimilarity.")
    p.add_argument("--labels", required=True, help="predicted labels CSV (id,label or one per line)")
    p.add_argument("--truth", required=True, help="true labels CSV (id,label or one per line)")
    p.add_argument("--input", help="signed dissimilarity the labels refer to (for the CC cost)")
    p.add_argument("--format", default="auto", choices=[f for f in FORMATS if f != "features"])
    p.add_argument("--values", default="similarity", choices=["similarity", "dissimilarity"],
                   help="edge lists: does a positive value mean similar (default, SNAP) or not")
    p.add_argument("--force", action="store_true", help="allow N > 20000 for --input")
    p.add_argument("--json", help="also write the scores as JSON")
    p.set_defaults(func=cmd_evaluate)


def _add_input(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="signed data file")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="auto (default) reads the content: .npy/.npz by their header, a square "
                        "numeric table is a matrix, a 3-column table an edge list (SNAP when "
                        "whitespace-separated, i,j,w CSV when comma-separated); anything else is "
                        "refused with the --format to pass. 'features' reads an (N, p) matrix "
                        "(.npy or text) and needs --shift")
    p.add_argument("--values", default="similarity", choices=["similarity", "dissimilarity"],
                   help="edge lists: does a positive value mean similar (default, SNAP) or not")
    p.add_argument("--metric", default="euclidean", help="pdist metric for --format features")
    p.add_argument("--shift", default=None, type=_shift,
                   help="features: theta in D = d(x_i, x_j) - theta: a number, mean, median, "
                        "quantile:<q> or inv_k (needs an integer --n-clusters)")
    p.add_argument("--zero-diagonal", action="store_true",
                   help="set a non-zero diagonal of a matrix input to 0 instead of refusing it")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--force", action="store_true",
                   help="allow N > 20000 (the memory needed is printed first)")


def _n_clusters(text: str):
    return text if text in ("cc", "first_positive") else positive_int(text)


def _shift(text: str):
    try:
        return float(text)
    except ValueError:
        return text


class InputError(ValueError):
    """A problem with a command-line argument or file; the message names the flag."""


def detect_format(path: Path) -> str:
    """The input format of ``path`` from its content, never from its suffix alone.

    ``.npy`` and ``.npz`` are recognised by their magic bytes (a 2-D ``.npy`` must be square
    or 1-D condensed to be a matrix). A text table is read as a matrix when it is square and
    numeric, as an edge list when it has 3 columns whose first two are ids (integers or names):
    SNAP when whitespace-separated, CSV when comma-separated. Anything else, a 3 x 3 table
    included, raises :class:`InputError` saying which ``--format`` to pass.
    """
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except ValueError as e:  # object arrays cannot be mapped (nor unpickled)
            raise InputError(f"--input {path}: not a numeric .npy array ({e})") from None
        if len(shape) == 1 or (len(shape) == 2 and shape[0] == shape[1]):
            return "npy"
        raise InputError(f"--input {path}: an array of shape {shape} is not a square signed "
                         "dissimilarity; if it holds features, pass --format features and --shift")
    if magic.startswith(b"PK"):
        return "npz"
    try:
        rows = _sample_rows(path)
    except UnicodeDecodeError:
        raise InputError(f"--input {path}: neither .npy, .npz nor text; expected a signed matrix, "
                         "an edge list or features") from None
    if not rows:
        raise InputError(f"--input {path}: no data rows")
    comma = "," in rows[0]
    fields = [(r.split(",") if comma else r.split()) for r in rows]
    if len(fields) > 1 and not _numeric(fields[0][-1:]) and _numeric(fields[1][-1:]):
        fields = fields[1:]  # a header row: its last column is a name, the next row's a number
    widths = {len(r) for r in fields}
    if len(widths) != 1:
        raise InputError(f"--input {path}: rows have {sorted(widths)} columns; expected a square "
                         "matrix (N columns), an edge list (3 columns) or features")
    (p,) = widths
    numeric = all(_numeric(r) for r in fields)
    n_rows = _count_data_rows(path) - (len(rows) - len(fields))
    if numeric and p == n_rows == 3:
        raise InputError(f"--input {path}: a 3 x 3 numeric table is either a matrix or an edge "
                         "list; pass --format matrix-csv or --format " + ("csv" if comma else "snap"))
    if numeric and p == n_rows:
        return "matrix-csv"
    if p == 3 and all(_numeric(r[2:]) for r in fields) and all(_is_id(t) for r in fields for t in r[:2]):
        return "csv" if comma else "snap"
    if numeric:
        raise InputError(f"--input {path}: a numeric table of {n_rows} rows and {p} columns is not "
                         "a square matrix or a 3-column edge list; if it holds features, pass "
                         "--format features and --shift")
    raise InputError(f"--input {path}: rows of {p} columns are not a square numeric matrix, a "
                     "3-column edge list (i j weight) or numeric features; pass --format")


def _sample_rows(path: Path, limit: int = 200) -> list[str]:
    """The first ``limit`` data lines (not empty, not a ``#`` comment)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                rows.append(line.strip())
                if len(rows) >= limit:
                    break
    return rows


def _count_data_rows(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip() and not line.lstrip().startswith("#"))


def _numeric(tokens) -> bool:
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True


def _is_id(token: str) -> bool:
    """An edge-list id: an integer or a name (not a fractional number)."""
    try:
        return float(token).is_integer()
    except ValueError:
        return True


def load_input(args: argparse.Namespace):
    """(X, ids, metric) for the estimators: a signed matrix with ids, or features."""
    from cvpr24.hcc.data import load_features, load_signed_edgelist, load_signed_matrix

    path = _existing("--input", args.input)
    fmt = detect_format(path) if args.format == "auto" else args.format
    zero_diagonal = getattr(args, "zero_diagonal", False)
    if fmt == "features":
        return load_features(path), None, args.metric
    if fmt in ("snap", "csv"):
        g = load_signed_edgelist(path, fmt, values=args.values)
        print(f"read {g.summary()}", file=sys.stderr)
        return g.D, g.ids, "precomputed"
    if fmt == "npz" and path.suffix.lower() != ".npz":
        raise InputError(f"--input {path}: a sparse matrix file must end in .npz")
    if fmt == "npy" and path.suffix.lower() != ".npy":
        raise InputError(f"--input {path}: a dense array file must end in .npy")
    if fmt == "matrix-csv" and path.suffix.lower() in (".npy", ".npz"):
        raise InputError(f"--format matrix-csv needs a text file, got {path}")
    return load_signed_matrix(path, zero_diagonal=zero_diagonal), None, "precomputed"


def _existing(flag: str, name: str) -> Path:
    path = Path(name)
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file")
    return path


def _check_memory(n: int, copies: int, args: argparse.Namespace) -> None:
    """Refuse N > 20000 without --force; with it, print the memory the run will need."""
    from cvpr24.hcc._validation import MAX_DENSE_N, dense_gib

    if n <= MAX_DENSE_N:
        return
    need = dense_gib(n, getattr(args, "dtype", "float64"), copies)
    what = f"N={n} objects: about {need:.1f} GiB of memory ({copies} dense N x N matrices)"
    if not args.force:
        raise InputError(f"--input {args.input}: {what}; above N={MAX_DENSE_N} pass --force to run "
                         "anyway (--dtype float32 halves it)")
    print(f"--force: {what}", file=sys.stderr)


def cmd_cluster(args: argparse.Namespace) -> int:
    from cvpr24.common import atomic_path
    from cvpr24.hcc.data import save_array, save_labels
    from cvpr24.hcc.estimators import HierarchicalCorrelationClustering

    with _one_line_warnings("cluster"):
        try:
            X, ids, metric = load_input(args)
            _check_memory(X.shape[0], DENSE_COPIES["cluster"], args)
            est = HierarchicalCorrelationClustering(
                n_clusters=args.n_clusters, linkage=args.linkage, metric=metric,
                shift=args.shift if metric != "precomputed" else None,
                zero_diagonal=args.zero_diagonal, dtype=args.dtype, force=args.force)
            start = time.perf_counter()
            est.fit(X)
        except ValueError as e:
            return _error("cluster", e)
    seconds = time.perf_counter() - start
    save_labels(args.out, est.labels_, ids)
    if args.linkage_out:
        save_array(args.linkage_out, est.linkage_matrix_)
    if args.dendrogram:
        from cvpr24.hcc.plot import plot_dendrogram

        ax, _ = plot_dendrogram(est.linkage_matrix_, heights=args.heights, labels=ids)
        ax.set_title(f"{args.linkage} linkage, N={len(est.labels_)}, K={est.n_clusters_}")
        ax.figure.tight_layout()
        with atomic_path(args.dendrogram) as tmp:
            ax.figure.savefig(tmp, dpi=120)
    shift = f", shift {est.shift_:.4g}" if est.shift_ is not None else ""
    print(f"N={len(est.labels_)}: {est.n_clusters_} clusters, CC cost {est.cc_cost_:.6g}{shift} "
          f"({seconds:.2f} s); labels -> {args.out}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from cvpr24.hcc.data import save_array
    from cvpr24.hcc.estimators import MinimaxEmbedding, TreePreservingEmbedding

    with _one_line_warnings("embed"):
        try:
            X, _, metric = load_input(args)
            n = X.shape[0]
            _check_memory(n, DENSE_COPIES[args.method], args)
            dim = args.dim if args.dim is not None else min(TPE_DIM, n - 1)
            if dim > n:
                raise InputError(f"--dim {dim} exceeds the number of objects N={n}")
            common = dict(n_components=dim, metric=metric,
                          shift=args.shift if metric != "precomputed" else None,
                          zero_diagonal=args.zero_diagonal, dtype=args.dtype, force=args.force)
            if args.method == "tpe":
                est = TreePreservingEmbedding(linkage=args.linkage, tree_distance=args.tree_distance,
                                              **common)
            else:
                est = MinimaxEmbedding(**common)
            Y = est.fit_transform(X)
        except ValueError as e:
            return _error("embed", e)
    save_array(args.out, Y)
    print(f"{args.method} embedding {Y.shape} -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sklearn import metrics

    from cvpr24.common import atomic_write
    from cvpr24.hcc.data import load_labels
    from cvpr24.hcc.linkage import cc_cost

    with _one_line_warnings("evaluate"):
        try:
            ids_p, pred = load_labels(_existing("--labels", args.labels))
            ids_t, truth = load_labels(_existing("--truth", args.truth))
            ids, truth = _align("--truth", ids_t, truth, "--labels", ids_p, len(pred))
            scores = {"n": int(len(pred)),
                      "ari": float(metrics.adjusted_rand_score(truth, pred)),
                      "ami": float(metrics.adjusted_mutual_info_score(truth, pred)),
                      "v_measure": float(metrics.v_measure_score(truth, pred))}
            if args.input:
                ns = argparse.Namespace(input=args.input, format=args.format, values=args.values,
                                        metric="euclidean", shift=None, force=args.force)
                D, ids_d, _ = load_input(ns)
                _check_memory(D.shape[0], DENSE_COPIES["evaluate"], ns)
                ids_d = None if ids_d is None else np.asarray(ids_d).astype(str)
                if ids_d is None and ids is not None:  # a matrix: objects are rows 0..N-1
                    ids_d = np.arange(D.shape[0]).astype(str)
                order = _positions("--input", ids_d, "--labels", ids, D.shape[0], len(pred))
                scores["cc_cost"] = cc_cost(D, _scatter(pred, order), force=args.force)
                scores["cc_cost_truth"] = cc_cost(D, _scatter(truth, order), force=args.force)
        except ValueError as e:
            return _error("evaluate", e)
    for k, v in scores.items():
        print(f"{k:<14} {v:.6g}" if isinstance(v, float) else f"{k:<14} {v}")
    if args.json:
        with atomic_write(args.json) as f:
            json.dump(scores, f, indent=2)
    return 0


def _align(flag, ids, values, ref_flag, ref_ids, n_ref):
    """``values`` (with ``ids``) reordered to the objects of ``ref_ids``; (ids, values)."""
    order = _positions(ref_flag, ref_ids, flag, ids, n_ref, len(values))
    return (ref_ids if ref_ids is not None else ids), _scatter(values, order)


def _positions(ref_flag, ref_ids, flag, ids, n_ref, n) -> np.ndarray:
    """For each object of ``ids`` (or position, without ids) its row in the reference."""
    if ref_ids is None or ids is None:
        if n != n_ref:
            raise InputError(f"{flag} has {n} entries but {ref_flag} has {n_ref}; without an id "
                             "column in both they are matched by position")
        if (ref_ids is None) != (ids is None):
            print(f"note: {ref_flag if ref_ids is None else flag} has no id column: matching by "
                  "position", file=sys.stderr)
        return np.arange(n)
    where = {v: k for k, v in enumerate(ref_ids.tolist())}
    missing = [i for i in ids.tolist() if i not in where]
    if len(missing) == len(ids):
        raise InputError(f"{flag} and {ref_flag} share no id ({flag}: {_show(ids)}; {ref_flag}: "
                         f"{_show(ref_ids)}); they describe different objects")
    if missing:
        raise InputError(f"{len(missing)} ids of {flag} are not in {ref_flag} (e.g. "
                         f"{_show(np.asarray(missing))})")
    if n != n_ref:
        raise InputError(f"{flag} covers {n} of the {n_ref} objects of {ref_flag}")
    return np.array([where[i] for i in ids.tolist()])


def _scatter(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[rows] = values
    return out


def _show(ids: np.ndarray) -> str:
    return ", ".join(ids[:3].tolist()) + (", ..." if len(ids) > 3 else "")


@contextlib.contextmanager
def _one_line_warnings(cmd: str):
    """Print the library's warnings as one line each, without a source line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        print(f"cvpr24 hcc {cmd}: warning: {w.message}", file=sys.stderr)


def _error(cmd: str, e: Exception) -> int:
    message = str(e)
    if not isinstance(e, InputError):
        for api, flag in API_TO_FLAGS:
            message = re.sub(r"\b" + re.escape(api), flag, message)
    print(f"cvpr24 hcc {cmd}: error: {message}", file=sys.stderr)
    return 2
