import os
import random
import warnings

import numpy as np
import pytest
import torch

from cvpr24.common import global_state, preserved_global_state


def _change_everything():
    torch.set_num_threads(torch.get_num_threads() + 1)
    torch.backends.mkldnn.enabled = not torch.backends.mkldnn.enabled
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_default_dtype(torch.float64)
    torch.set_float32_matmul_precision("medium")
    torch.set_grad_enabled(False)
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    warnings.simplefilter("ignore")
    os.environ["CVPR24_STATE_TEST"] = "1"
    os.environ["PATH"] = "changed"
    os.environ.pop("HOME", None)


def test_every_setting_is_restored_on_exit_and_on_error():
    before = global_state()
    with preserved_global_state():
        _change_everything()
        during = global_state()
    assert global_state() == before
    # each setting really changed inside, so the comparison above can fail on any of them
    assert [k for k in before if during[k] == before[k]] == []
    with pytest.raises(RuntimeError), preserved_global_state():
        _change_everything()
        raise RuntimeError("interrupted")
    assert global_state() == before


def test_as_a_decorator_and_the_random_stream_continues():
    @preserved_global_state()
    def draws():
        _change_everything()
        return torch.rand(1)

    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    first = torch.rand(1)
    draws()
    assert torch.equal(torch.cat([first, torch.rand(1)]), expected)
