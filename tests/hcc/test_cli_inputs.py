"""A user's own files through ``cvpr24 hcc``: formats read from content, labels matched by
id, every bad input refused in one line that names the flag (exit 2)."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from cvpr24.cli import main
from cvpr24.hcc import HierarchicalCorrelationClustering, cc_cost, cc_path, make_signed_partition
from cvpr24.hcc.cli import TPE_DIM
from cvpr24.hcc.data import load_labels, save_labels, save_signed_edgelist


@pytest.fixture
def planted(tmp_path):
    D, y = make_signed_partition([10, 8, 6], p_flip=0.1, seed=0)
    return tmp_path, D, y


def _run(capsys, *argv):
    rc = main(["hcc", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _refused(capsys, *argv) -> str:
    rc, _, err = _run(capsys, *argv)
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_dense_matrix_csv_is_read_as_a_matrix(planted, capsys):
    tmp, D, y = planted
    np.savetxt(tmp / "Dm.csv", D, delimiter=",")
    rc, out, _ = _run(capsys, "cluster", "--input", str(tmp / "Dm.csv"), "--n-clusters", "3",
                      "--out", str(tmp / "l.csv"))
    assert rc == 0 and out.startswith("N=24:")
    _, labels = load_labels(tmp / "l.csv")
    assert len(labels) == 24


def test_features_and_wide_or_ambiguous_tables_are_refused_with_the_format_to_pass(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "X.csv", rng.normal(size=(30, 4)), delimiter=",", header="a,b,c,d",
               comments="")
    err = _refused(capsys, "cluster", "--input", str(tmp_path / "X.csv"), "--out", "l.csv")
    assert "--format features" in err and "30 rows and 4 columns" in err
    np.savetxt(tmp_path / "X3.csv", rng.normal(size=(30, 3)), delimiter=",")  # fractional "ids"
    assert "--format features" in _refused(capsys, "cluster", "--input", str(tmp_path / "X3.csv"),
                                           "--out", "l.csv")
    np.save(tmp_path / "X.npy", rng.normal(size=(30, 4)))
    assert "--format features" in _refused(capsys, "cluster", "--input", str(tmp_path / "X.npy"),
                                           "--out", "l.csv")
    (tmp_path / "e4.csv").write_text("a,b,1,x\nb,c,-1,x\nc,d,1,x\n")
    assert "rows of 4 columns" in _refused(capsys, "cluster", "--input", str(tmp_path / "e4.csv"),
                                     "--out", "l.csv")
    err = _refused(capsys, "cluster", "--input", str(tmp_path / "e4.csv"), "--format", "csv",
                   "--out", "l.csv")
    assert "e4.csv: row 1 must be 'i,j,weight' (3 columns)" in err
    np.savetxt(tmp_path / "m3.csv", np.array([[0, -1, 1], [-1, 0, 1], [1, 1, 0]]), delimiter=",")
    err = _refused(capsys, "cluster", "--input", str(tmp_path / "m3.csv"), "--out", "l.csv")
    assert "--format matrix-csv or --format csv" in err
    assert _run(capsys, "cluster", "--input", str(tmp_path / "m3.csv"), "--format", "matrix-csv",
                "--out", str(tmp_path / "l.csv"))[0] == 0
    assert not (tmp_path / "l.csv").read_text().count("\n") == 0


def test_edge_lists_are_recognised_with_a_header_and_names_as_ids(tmp_path, capsys):
    (tmp_path / "g.csv").write_text("src,dst,weight\nann,bob,1\nbob,cid,1\ncid,dan,-1\nann,dan,-1\n")
    rc, out, err = _run(capsys, "cluster", "--input", str(tmp_path / "g.csv"), "--out",
                        str(tmp_path / "l.csv"))
    assert rc == 0 and "4 objects" in err
    ids, _ = load_labels(tmp_path / "l.csv")
    assert sorted(ids) == ["ann", "bob", "cid", "dan"]


def test_evaluate_matches_by_id_and_refuses_disjoint_ids(planted, capsys):
    tmp, D, y = planted
    ids = np.arange(24) * 10 + 7
    perm = np.random.default_rng(1).permutation(24)
    save_labels(tmp / "pred.csv", y, ids)
    save_labels(tmp / "truth.csv", y[perm], ids[perm])  # same objects, another row order
    save_signed_edgelist(tmp / "g.txt", np.sign(D), "snap", ids=ids)
    rc, out, _ = _run(capsys, "evaluate", "--labels", str(tmp / "pred.csv"), "--truth",
                      str(tmp / "truth.csv"), "--input", str(tmp / "g.txt"))
    assert rc == 0 and "ari            1" in out
    cost = float(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("cc_cost ")))
    assert cost == pytest.approx(cc_cost(np.sign(D), y))  # the file round-trips sign(D)
    save_labels(tmp / "other.csv", y, np.arange(24) + 1000)  # none of 7, 17, ...
    err = _refused(capsys, "evaluate", "--labels", str(tmp / "pred.csv"), "--truth",
                   str(tmp / "other.csv"))
    assert "share no id" in err
    save_labels(tmp / "some.csv", y, np.arange(24))  # 7 and 17 shared, 22 ids not
    assert "22 ids of --truth are not in --labels" in _refused(
        capsys, "evaluate", "--labels", str(tmp / "pred.csv"), "--truth", str(tmp / "some.csv"))
    err = _refused(capsys, "evaluate", "--labels", str(tmp / "missing.csv"), "--truth",
                   str(tmp / "truth.csv"))
    assert "--labels" in err and "missing.csv: no such file" in err


def test_errors_name_the_flags_not_the_python_arguments(planted, capsys):
    tmp, D, y = planted
    D1 = D.copy()
    np.fill_diagonal(D1, 1.0)
    np.save(tmp / "diag.npy", D1)
    err = _refused(capsys, "cluster", "--input", str(tmp / "diag.npy"), "--out", "l.csv")
    assert "pass --zero-diagonal" in err and "zero_diagonal=True" not in err
    assert _run(capsys, "cluster", "--input", str(tmp / "diag.npy"), "--zero-diagonal",
                "--out", str(tmp / "l.csv"))[0] == 0
    np.save(tmp / "D.npy", D)
    err = _refused(capsys, "embed", "--input", str(tmp / "D.npy"), "--dim", "99", "--out", "y.npy")
    assert "--dim 99" in err
    np.save(tmp / "X.npy", np.random.default_rng(0).normal(size=(30, 2)))
    err = _refused(capsys, "cluster", "--input", str(tmp / "X.npy"), "--format", "features",
                   "--shift", "inv_k", "--out", "l.csv")
    assert "--shift inv_k needs an integer --n-clusters" in err


def test_large_n_needs_force_and_says_how_much_memory(tmp_path, capsys):
    n = 20_002  # 10 001 disjoint pairs: a sparse file, a dense problem beyond the limit
    lines = "".join(f"{2 * k} {2 * k + 1} 1\n" for k in range(n // 2))
    (tmp_path / "big.txt").write_text(lines)
    err = _refused(capsys, "cluster", "--input", str(tmp_path / "big.txt"), "--out", "l.csv")
    assert "N=20002" in err and "GiB" in err and "pass --force" in err
    S = sp.csr_matrix((n, n))
    with pytest.raises(ValueError, match="pass force=True"):
        HierarchicalCorrelationClustering().fit(S)
    with pytest.raises(ValueError, match="force must be a bool"):
        HierarchicalCorrelationClustering(force="yes").fit(np.zeros((3, 3)))


def test_cc_cost_and_cc_path_validate_like_the_estimators(planted):
    _, D, y = planted
    bad = D.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cc_cost(bad, y)
    asym = D.copy()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        cc_cost(asym, y)
    with pytest.raises(ValueError, match="symmetric"):
        cc_cost(sp.csr_matrix(asym), y)
    with pytest.raises(ValueError, match="NaN"):
        cc_cost(sp.csr_matrix(bad), y)
    with pytest.raises(ValueError, match="to match labels"):
        cc_cost(D, y[:-1])
    Z = np.array([[0.0, 1.0, -1.0, 2.0]])
    with pytest.raises(ValueError, match="symmetric"):
        cc_path(np.array([[0.0, 1.0], [2.0, 0.0]]), Z)
    assert cc_cost(sp.csr_matrix(D), y) == pytest.approx(cc_cost(D, y))


def test_snap_input_warnings_are_one_plain_line(planted, capsys):
    tmp, D, _ = planted
    save_signed_edgelist(tmp / "g.txt", np.sign(D), "snap")  # +-1 only: heavily tied
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may escape as a Python warning
        rc, _, err = _run(capsys, "cluster", "--input", str(tmp / "g.txt"), "--out",
                          str(tmp / "l.csv"))
    assert rc == 0
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert lines and all(ln.startswith("cvpr24 hcc cluster: warning: ") for ln in lines)
    assert "UserWarning" not in err and ".py:" not in err


def test_embed_default_dimension(planted, capsys):
    tmp, D, _ = planted
    np.save(tmp / "D.npy", D)
    assert _run(capsys, "embed", "--input", str(tmp / "D.npy"), "--out", str(tmp / "y.npy"))[0] == 0
    assert np.load(tmp / "y.npy").shape == (24, TPE_DIM)
    small = tmp / "small.npy"
    np.save(small, D[:6, :6])
    assert _run(capsys, "embed", "--input", str(small), "--out", str(tmp / "y6.npy"))[0] == 0
    assert np.load(tmp / "y6.npy").shape == (6, 5)  # N - 1 when N <= the recommended d
