"""The command line (cluster / embed / evaluate) and the reproduction's smoke run."""

import json

import numpy as np
import pytest

from cvpr24.cli import main
from cvpr24.common import global_state
from cvpr24.hcc import load_signed_matrix, make_signed_partition, save_signed_edgelist
from cvpr24.hcc.data import load_labels


@pytest.fixture
def planted(tmp_path):
    D, y = make_signed_partition([10, 8, 6], p_flip=0.1, mag_noise=0.0, seed=0)
    np.save(tmp_path / "D.npy", D)
    np.savetxt(tmp_path / "y.csv", y, fmt="%d")
    save_signed_edgelist(tmp_path / "g.txt", np.sign(D), "snap", ids=np.arange(24) * 10 + 7)
    return tmp_path, D, y


def test_cluster_snap_writes_labels_linkage_and_dendrogram(planted, capsys):
    tmp, D, y = planted
    rc = main(["hcc", "cluster", "--input", str(tmp / "g.txt"), "--out", str(tmp / "l.csv"),
               "--linkage-out", str(tmp / "Z.npy"), "--dendrogram", str(tmp / "t.png"),
               "--heights", "raw"])
    assert rc == 0
    ids, labels = load_labels(tmp / "l.csv")
    assert sorted(int(i) for i in ids) == sorted(np.arange(24) * 10 + 7)  # original ids kept
    assert np.load(tmp / "Z.npy").shape == (23, 4)
    assert (tmp / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert "3 clusters" in capsys.readouterr().out
    assert not list(tmp.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_cluster_embed_evaluate_on_matrix(planted, capsys):
    tmp, D, y = planted
    assert main(["hcc", "cluster", "--input", str(tmp / "D.npy"), "--n-clusters", "3",
                 "--out", str(tmp / "l.csv")]) == 0
    assert main(["hcc", "evaluate", "--labels", str(tmp / "l.csv"), "--truth", str(tmp / "y.csv"),
                 "--input", str(tmp / "D.npy"), "--json", str(tmp / "s.json")]) == 0
    scores = json.loads((tmp / "s.json").read_text())
    assert scores["ari"] == 1.0 and scores["cc_cost"] == scores["cc_cost_truth"]
    for method in ("tpe", "minimax"):
        assert main(["hcc", "embed", "--input", str(tmp / "D.npy"), "--method", method,
                     "--dim", "4", "--out", str(tmp / f"{method}.npy")]) == 0
        assert np.load(tmp / f"{method}.npy").shape == (24, 4)
    assert load_signed_matrix(tmp / "D.npy").shape == (24, 24)


def test_cluster_features_with_shift(tmp_path):
    rng = np.random.default_rng(0)
    X = np.repeat([[0, 0], [8, 8]], 15, axis=0) + rng.standard_normal((30, 2))
    np.save(tmp_path / "X.npy", X)
    assert main(["hcc", "cluster", "--input", str(tmp_path / "X.npy"), "--format", "features",
                 "--shift", "inv_k", "--n-clusters", "2", "--out", str(tmp_path / "l.csv")]) == 0
    _, labels = load_labels(tmp_path / "l.csv")
    assert len(set(labels[:15])) == 1 and len(set(labels[15:])) == 1 and labels[0] != labels[-1]


def test_cli_errors_are_one_line_with_code_2(tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.array([[0, 1.0], [2.0, 0]]))
    assert main(["hcc", "cluster", "--input", str(tmp_path / "bad.npy"), "--out",
                 str(tmp_path / "l.csv")]) == 2
    err = capsys.readouterr().err
    assert "symmetric" in err and err.count("\n") == 1
    assert not (tmp_path / "l.csv").exists()
    with pytest.raises(SystemExit) as e:
        main(["hcc", "cluster", "--input", "x.npy", "--out", "l.csv", "--n-clusters", "zero"])
    assert e.value.code == 2


def test_reproduce_tiny_smoke(tmp_path):
    from cvpr24.hcc import reproduce

    before = global_state()
    result = reproduce.run(tmp_path, size="tiny")
    assert global_state() == before  # seeds, warnings filters, environment: as they were
    assert [c.name for c in result.claims] == ["C1", "C2", "C3", "C4"]
    assert all(c.status in ("passed", "failed") for c in result.claims)
    assert all(c.measured is not None and np.isfinite(c.measured.mean) for c in result.claims)
    assert (tmp_path / "c1_ari_vs_pflip.png").is_file()
    tables = json.loads((tmp_path / "tables.json").read_text())
    assert {"C1", "C1_control", "C2", "C3", "C4"} <= set(tables["tables"])
    assert result.deviations


def test_missing_numba_names_the_extra():
    import subprocess
    import sys

    code = "import sys; sys.modules['numba'] = None; import cvpr24.hcc"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "pip install 'cvpr24[hcc]'" in proc.stderr


@pytest.mark.filterwarnings("ignore:.*tied")
def test_docstring_examples_run():
    import doctest

    from cvpr24.hcc import estimators, linkage

    for module in (linkage, estimators):
        failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert attempted > 0 and failed == 0, module.__name__
