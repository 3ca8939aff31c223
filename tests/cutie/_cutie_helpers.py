"""Tiny configurations and inputs shared by the cutie tests."""

import torch

from cvpr24.cutie.model import CutieConfig, CutieModel


def tiny_config(**overrides) -> CutieConfig:
    """The width of the committed parity reference (about 0.3 M parameters): ``CutieConfig.cpu``."""
    return CutieConfig.cpu(**overrides)


def tiny_model(seed: int = 0, **overrides) -> CutieModel:
    torch.manual_seed(seed)
    model = CutieModel(tiny_config(**overrides)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random BatchNorm statistics so that they matter
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model
