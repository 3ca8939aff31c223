"""Image metrics of the official evaluation (M1-M3): PSNR, SSIM, LPIPS (VGG, weights by path).

All take images ``[..., 3, H, W]`` in [0, 1] and return one value per image.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def psnr(prediction: Tensor, target: Tensor, max_db: float = 100.0) -> Tensor:
    """(M1) ``-10 log10(MSE)`` of images clipped to [0, 1]; identical images give ``max_db``."""
    mse = (prediction.clamp(0, 1) - target.clamp(0, 1)).pow(2).flatten(-3).mean(-1)
    return (-10 * torch.log10(mse.clamp_min(10 ** (-max_db / 10))))


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5, dtype=torch.float64) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(prediction: Tensor, target: Tensor, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """(M2) SSIM as scikit-image computes it with ``win_size=11, gaussian_weights=True,
    channel_axis=0, data_range=1``: Gaussian window (sigma 1.5, 11 taps), sample covariances
    (N/(N-1), N = 121), the 5-pixel border dropped, mean over pixels and channels."""
    shape = prediction.shape
    x = prediction.reshape(-1, 1, *shape[-2:]).double()
    y = target.reshape(-1, 1, *shape[-2:]).double()
    w = _gaussian_window()
    kernel_x, kernel_y = w.view(1, 1, 1, -1), w.view(1, 1, -1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kernel_x), kernel_y)

    n = w.numel() ** 2
    cov_norm = n / (n - 1)
    ux, uy = blur(x), blur(y)
    vx = cov_norm * (blur(x * x) - ux * ux)
    vy = cov_norm * (blur(y * y) - uy * uy)
    vxy = cov_norm * (blur(x * y) - ux * uy)
    c1, c2 = k1**2, k2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).view(*shape[:-3], shape[-3]).mean(-1).to(prediction.dtype)


_VGG_CONVS = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), "M",
              (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512), (512, 512)]
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16.features
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """(M3) LPIPS with a VGG-16 trunk: unit-normalised features at five ReLUs, squared
    differences weighted by learned 1x1 layers, spatially averaged and summed.

    Both weight files come by path: ``vgg_path`` holds torchvision's ``vgg16`` state dict
    (``features.*``), ``lin_path`` the ``lpips`` package's ``weights/v0.1/vgg.pth``.
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for item in _VGG_CONVS:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(*item, 3, 1, 1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_paths(cls, vgg_path: str | os.PathLike | None, lin_path: str | os.PathLike | None) -> LPIPS:
        if vgg_path is None or lin_path is None:
            raise ValueError("LPIPS needs VGG-16 weights (vgg_path, torchvision's vgg16 state dict) and the LPIPS "
                             "linear layers (lin_path, lpips/weights/v0.1/vgg.pth); nothing is downloaded")
        model = cls()
        vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
        feats = {k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")}
        model.features.load_state_dict(feats, strict=True)
        lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        model.lins.load_state_dict({f"{i}.weight": lin[f"lin{i}.model.1.weight"] for i in range(5)}, strict=True)
        return model.eval()

    def forward(self, prediction: Tensor, target: Tensor, normalize: bool = True) -> Tensor:
        """``[N, 3, H, W]`` pairs -> ``[N]``; ``normalize=True`` maps [0, 1] inputs to [-1, 1]."""
        if normalize:
            prediction, target = 2 * prediction - 1, 2 * target - 1
        x, y = (prediction - self.shift) / self.scale, (target - self.shift) / self.scale
        total = 0.0
        lin = iter(self.lins)
        for i, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if i in _TAPS:
                nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + next(lin)((nx - ny) ** 2).mean(dim=(2, 3))
            if i == _TAPS[-1]:
                break
        return total.squeeze(1)


def lpips(prediction: Tensor, target: Tensor, model: LPIPS | None = None) -> Tensor:
    """(M3) LPIPS per image; ``model`` from :meth:`LPIPS.from_paths` (required)."""
    if model is None:
        raise ValueError("lpips needs model=LPIPS.from_paths(vgg_path, lin_path): VGG weights are passed by path")
    shape = prediction.shape
    return model(prediction.reshape(-1, *shape[-3:]), target.reshape(-1, *shape[-3:])).view(shape[:-3])


