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
import json
import sys
import time
from pathlib import Path

import numpy as np

from cvpr24.common.argtypes import positive_int

FORMATS = ("auto", "npy", "npz", "matrix-csv", "snap", "csv", "features")


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
    p.add_argument("--dim", type=positive_int, default=20, help="embedding dimension (default 20)")
    p.add_argument("--linkage", default="sum", choices=["sum", "avg", "max", "min"],
                   help="tree for --method tpe (default sum)")
    p.add_argument("--tree-distance", default="level", choices=["level", "depth", "height"])
    p.add_argument("--out", required=True, help="embedding .npy (N, dim)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("evaluate", help="ARI / AMI / V-measure (and CC cost) of labels vs truth",
                       description="Compare predicted labels with ground truth; with --input also "
                                   "the CC cost of both on the signed dissimilarity.")
    p.add_argument("--labels", required=True, help="predicted labels CSV (id,label or one per line)")
    p.add_argument("--truth", required=True, help="true labels CSV (id,label or one per line)")
    p.add_argument("--input", help="signed dissimilarity the labels refer to (for the CC cost)")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--json", help="also write the scores as JSON")
    p.set_defaults(func=cmd_evaluate)


def _add_input(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="signed data file")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="auto: .npy/.npz matrix, .txt/.tsv SNAP edge list, .csv edge list i,j,w; "
                        "'features' reads an (N, p) matrix (.npy/.csv) and needs --shift")
    p.add_argument("--values", default="similarity", choices=["similarity", "dissimilarity"],
                   help="edge lists: does a positive value mean similar (default, SNAP) or not")
    p.add_argument("--metric", default="euclidean", help="pdist metric for --format features")
    p.add_argument("--shift", default=None, type=_shift,
                   help="features: theta in D = d(x_i, x_j) - theta: a number, mean, median, "
                        "quantile:<q> or inv_k (needs an integer --n-clusters)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])


def _n_clusters(text: str):
    return text if text in ("cc", "first_positive") else positive_int(text)


def _shift(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def load_input(args: argparse.Namespace):
    """(X, ids, metric) for the estimators: a signed matrix with ids, or features."""
    from cvpr24.hcc.data import load_features, load_signed_edgelist, load_signed_matrix

    path = Path(args.input)
    if not path.is_file():
        raise ValueError(f"--input {path}: no such file")
    fmt = args.format
    if fmt == "auto":
        fmt = {".npy": "npy", ".npz": "npz", ".txt": "snap", ".tsv": "snap", ".csv": "csv"}.get(
            path.suffix.lower())
        if fmt is None:
            raise ValueError(f"--input {path}: cannot guess the format from {path.suffix!r}; "
                             f"pass --format")
    if fmt == "features":
        return load_features(path), None, args.metric
    if fmt in ("snap", "csv"):
        g = load_signed_edgelist(path, fmt, values=args.values)
        print(f"read {g.summary()}", file=sys.stderr)
        return g.D, g.ids, "precomputed"
    if fmt == "matrix-csv" and path.suffix.lower() != ".csv":
        raise ValueError(f"--format matrix-csv needs a .csv file, got {path}")
    return load_signed_matrix(path), None, "precomputed"


def cmd_cluster(args: argparse.Namespace) -> int:
    from cvpr24.common import atomic_path
    from cvpr24.hcc.data import save_array, save_labels
    from cvpr24.hcc.estimators import HierarchicalCorrelationClustering

    try:
        X, ids, metric = load_input(args)
        est = HierarchicalCorrelationClustering(
            n_clusters=args.n_clusters, linkage=args.linkage, metric=metric,
            shift=args.shift if metric != "precomputed" else None, dtype=args.dtype)
        start = time.perf_counter()
        est.fit(X)
    except ValueError as e:
        return _error("cluster", e)
    seconds = time.perf_counter() - start
    save_labels(args.out, est.labels_, ids)
    if args.linkage_out:
        save_array(args.linkage_out, est.linkage_matrix_)
    if args.dendrogram:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from cvpr24.hcc.plot import plot_dendrogram

        ax, _ = plot_dendrogram(est.linkage_matrix_, heights=args.heights, labels=ids)
        ax.set_title(f"{args.linkage} linkage, N={len(est.labels_)}, K={est.n_clusters_}")
        ax.figure.tight_layout()
        with atomic_path(args.dendrogram) as tmp:
            ax.figure.savefig(tmp, dpi=120)
        plt.close(ax.figure)
    shift = f", shift {est.shift_:.4g}" if est.shift_ is not None else ""
    print(f"N={len(est.labels_)}: {est.n_clusters_} clusters, CC cost {est.cc_cost_:.6g}{shift} "
          f"({seconds:.2f} s); labels -> {args.out}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from cvpr24.hcc.data import save_array
    from cvpr24.hcc.estimators import MinimaxEmbedding, TreePreservingEmbedding

    try:
        X, _, metric = load_input(args)
        shift = args.shift if metric != "precomputed" else None
        if args.method == "tpe":
            est = TreePreservingEmbedding(n_components=args.dim, linkage=args.linkage,
                                          tree_distance=args.tree_distance, metric=metric,
                                          shift=shift, dtype=args.dtype)
        else:
            est = MinimaxEmbedding(n_components=args.dim, metric=metric, shift=shift,
                                   dtype=args.dtype)
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

    try:
        ids_p, pred = load_labels(args.labels)
        ids_t, truth = load_labels(args.truth)
        if len(pred) != len(truth):
            raise ValueError(f"--labels has {len(pred)} entries but --truth has {len(truth)}")
        if set(ids_p) == set(ids_t) and not np.array_equal(ids_p, ids_t):
            order = {v: k for k, v in enumerate(ids_t)}  # align truth to the predictions' ids
            truth = truth[[order[i] for i in ids_p]]
        scores = {"n": int(len(pred)),
                  "ari": float(metrics.adjusted_rand_score(truth, pred)),
                  "ami": float(metrics.adjusted_mutual_info_score(truth, pred)),
                  "v_measure": float(metrics.v_measure_score(truth, pred))}
        if args.input:
            ns = argparse.Namespace(input=args.input, format=args.format, values="similarity",
                                    metric="euclidean", shift=None, dtype="float64")
            D, _, metric = load_input(ns)
            if metric != "precomputed":
                raise ValueError("--input must be a signed dissimilarity for the CC cost")
            scores["cc_cost"] = cc_cost(D, pred)
            scores["cc_cost_truth"] = cc_cost(D, truth)
    except ValueError as e:
        return _error("evaluate", e)
    for k, v in scores.items():
        print(f"{k:<14} {v:.6g}" if isinstance(v, float) else f"{k:<14} {v}")
    if args.json:
        with atomic_write(args.json) as f:
            json.dump(scores, f, indent=2)
    return 0


def _error(cmd: str, e: Exception) -> int:
    print(f"cvpr24 hcc {cmd}: error: {e}", file=sys.stderr)
    return 2
