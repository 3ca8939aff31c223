import pytest
import torch
from _lotus_helpers import PatchOracle


@pytest.fixture
def oracle_cls():
    return PatchOracle


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other workers for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
