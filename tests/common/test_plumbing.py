import re

import numpy as np
import pytest
import torch

from cvpr24.common import atomic_write, get_device, optional_import, seed_everything
from cvpr24.common.io import atomic_path


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_keeps_suffix_and_renames(tmp_path):
    target = tmp_path / "sub" / "arr.npy"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == target.parent
        np.save(tmp, np.arange(3))
    assert np.array_equal(np.load(target), np.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["arr.npy"]


def test_atomic_write_rejects_read_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "r"):
        pass


def test_seed_everything_reproduces_all_generators():
    def draw(rng):  # the returned generator and both global states
        return rng.random(), np.random.rand(), torch.rand(1).item()  # noqa: NPY002

    a = draw(seed_everything(3))
    assert draw(seed_everything(3)) == a
    assert draw(seed_everything(4)) != a
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed"):
            seed_everything(bad)


def test_device_choice():
    assert get_device() == torch.device("cpu")
    assert get_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="device"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")


def test_optional_import_names_the_extra():
    assert optional_import("json", "sag").dumps([]) == "[]"
    with pytest.raises(ImportError, match=r"pip install 'cvpr24\[sag\]'"):
        optional_import("surely_not_a_module_xyz", "sag")


def test_argtypes_accept_the_interval_and_name_what_was_expected():
    import argparse

    from cvpr24.common.argtypes import number_in, positive_float, positive_int, unit_interval

    assert positive_int("3") == 3 and positive_float("0.5") == 0.5 and unit_interval("1") == 1.0
    at_least = number_in(float, -1, hint="why")
    assert at_least("-1") == -1.0
    cases = [
        (positive_int, "0", "a positive integer"),
        (positive_int, "1.5", "a positive integer"),
        (positive_float, "0", "a positive number"),
        (unit_interval, "1.01", "a number in [0, 1]"),
        (unit_interval, "nan", "a number in [0, 1]"),
        (at_least, "-1.5", "a number >= -1 (why)"),
    ]
    for parse, text, expected in cases:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"expected {expected}, got")):
            parse(text)


def test_no_lazy_export_is_shadowed_by_a_submodule():
    # ``import cvpr24.common.x`` sets the package attribute ``x`` to the submodule, so an export
    # named like a submodule would turn into a module depending on import order.
    from pathlib import Path

    import cvpr24.common as common

    submodules = {p.stem for p in Path(common.__file__).parent.glob("*.py")}
    assert not submodules & set(common.__all__)
