import pytest

from cvpr24.egothink.data import load_egothink
from cvpr24.egothink.synth import generate_synthetic


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small EgoSynth-12 set in the GitHub layout (2 items per dim, 4 for Activity/Forecasting)."""
    return generate_synthetic(tmp_path_factory.mktemp("egosynth"), 2, seed=3, image_size=32)


@pytest.fixture(scope="session")
def synth_ds(synth_root):
    return load_egothink(synth_root)


class Script:
    """A scripted responder for ChatServer: pops (status, payload) entries, then repeats a default."""

    def __init__(self, entries=(), default=(200, "Fine. Rating: [[1]]")):
        self.entries = list(entries)
        self.default = default

    def __call__(self, body):
        return self.entries.pop(0) if self.entries else self.default


@pytest.fixture
def script():
    return Script


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is fastest and avoids spin-waiting on a shared machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
