"""Triggers: the eight solid patches of LOTUS, trigger codes, and the WaNet warp.

LOTUS stamps a *set* of triggers on an image, ``x ⊕ T_S`` for ``S ⊆ {0..K-1}``. The eight
patch triggers are pairwise disjoint squares, so stamping commutes and is idempotent, and a
set is stamped in one vectorised blend whatever its size.

Equation tags ``LOTUS Ln`` refer to the numbering of ``docs/lotus.md`` (the paper's own
numbers could not be read).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

# (R, G, B) in [0, 1], in the official order.
PATCH_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.9, 0.1, 0.1),
    (0.1, 0.9, 0.1),
    (0.1, 0.1, 0.9),
    (0.9, 0.9, 0.1),
    (0.9, 0.1, 0.9),
    (0.1, 0.9, 0.9),
    (0.1, 0.1, 0.1),
    (0.9, 0.9, 0.9),
)
MAX_TRIGGERS = len(PATCH_COLORS)
RANGE_TOL = 1e-6


@runtime_checkable
class Trigger(Protocol):
    """Anything that maps a batch of images in ``[0, 1]`` (N, 3, H, W) to stamped images."""

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a float (N, C, H, W) batch with values in [0, 1]."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of shape (N, C, H, W), got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if not x.numel():
        return
    lo, hi = (float(v) for v in torch.aminmax(x))     # one pass; NaN propagates into both
    if lo != lo:
        raise ValueError(f"{name} holds NaN values")
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise ValueError(f"{name} must hold images in [0, 1] (stamp before normalising), got values in "
                         f"[{lo:.4g}, {hi:.4g}]")


def patch_layout(height: int, width: int | None = None) -> tuple[int, list[tuple[int, int]]]:
    """Side ``s`` and top-left (row, col) of the eight official patches for an H x W image.

    ``s = H // 5``, margin ``p = H // 16``, centre ``c = H // 2`` (the official code uses ``H``
    for both axes, so the image must be square).
    """
    width = height if width is None else width
    if height != width:
        raise ValueError(f"the official patch layout needs square images, got {height}x{width}; "
                         "pass explicit positions= to TriggerSet for other shapes")
    if height < 10:
        raise ValueError(f"image_size must be at least 10 for the patch layout, got {height}")
    h = height
    s, p, c = h // 5, h // 16, h // 2
    far, mid = h - s - p, c - s // 2
    return s, [(p, p), (far, far), (p, far), (far, p), (mid, p), (p, mid), (far, mid), (mid, far)]


def codes(k: int) -> list[str]:
    """All ``2^K - 1`` non-empty trigger codes, ``bin(i)[2:].zfill(K)`` for i = 1..2^K-1.

    Character ``j`` of a code is ``'1'`` when trigger ``j`` is stamped (``"1000"`` = trigger 0).
    """
    _check_k(k)
    return [bin(i)[2:].zfill(k) for i in range(1, 2**k)]


def code_to_mask(code: str, k: int) -> torch.Tensor:
    """The BoolTensor[K] of a code string."""
    if len(code) != k or set(code) - {"0", "1"}:
        raise ValueError(f"code must be a string of {k} characters '0'/'1', got {code!r}")
    return torch.tensor([ch == "1" for ch in code])


def code_bits(k: int) -> torch.Tensor:
    """LongTensor[K] of the integer code of each single trigger: ``2^(K-1-j)`` for trigger ``j``."""
    return torch.tensor([1 << (k - 1 - j) for j in range(k)])


def subsets_to_codes(subsets: torch.Tensor, n: int, k: int, device: torch.device | None = None) -> torch.Tensor:
    """Integer codes LongTensor[n] of a BoolTensor ``subsets`` (n, K) (or (K,) shared by all)."""
    subsets = torch.as_tensor(subsets, dtype=torch.bool, device=device)
    if subsets.shape not in ((n, k), (k,)):
        raise ValueError(f"subsets must have shape (N, K) = ({n}, {k}) or (K,), got {tuple(subsets.shape)}")
    return (subsets * code_bits(k).to(subsets.device)).sum(-1).expand(n)


def check_codes(codes: torch.Tensor | int, n: int, k: int, device: torch.device | None = None) -> torch.Tensor:
    """``codes`` as a LongTensor[n] of integer codes in ``[0, 2^K)`` (one int is shared by all)."""
    codes = torch.as_tensor(codes, device=device)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    if codes.ndim == 0:
        codes = codes.expand(n)
    if codes.shape != (n,):
        raise ValueError(f"codes must have shape (N,) = ({n},), got {tuple(codes.shape)}")
    if n and (int(codes.min()) < 0 or int(codes.max()) >= 2**k):
        raise ValueError(f"codes must be in [0, {2**k - 1}] for K={k}, got values in "
                         f"[{int(codes.min())}, {int(codes.max())}]")
    return codes.long()


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_TRIGGERS:
        raise ValueError(f"the number of triggers K must be an integer in [1, {MAX_TRIGGERS}], got {k!r}")


class PatchTrigger:
    """One solid square patch: replaces every channel of an ``size x size`` block.

    Parameters
    ----------
    color : tuple of float
        RGB colour in [0, 1].
    row, col : int
        Top-left corner.
    size : int
        Side of the square in pixels.
    """

    def __init__(self, color: Sequence[float], row: int, col: int, size: int):
        self.color = tuple(float(c) for c in color)
        self.row, self.col, self.size = int(row), int(col), int(size)

    def mask(self, height: int, width: int) -> torch.Tensor:
        """BoolTensor[H, W], true inside the patch."""
        m = torch.zeros(height, width, dtype=torch.bool)
        m[self.row:self.row + self.size, self.col:self.col + self.size] = True
        return m

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        color = torch.tensor(self.color, dtype=x.dtype, device=x.device)[:, None, None]
        out[..., self.row:self.row + self.size, self.col:self.col + self.size] = color
        return out


class TriggerSet:
    """The ``K`` disjoint patch triggers ``t_0..t_{K-1}`` of LOTUS.

    Parameters
    ----------
    k : int
        Number of triggers, ``1 <= K <= 8``.
    image_size : int
        Side of the (square) images.
    positions : sequence of (row, col), optional
        Explicit top-left corners (length K); required for non-square images.
    size : int, optional
        Patch side when ``positions`` is given (default ``image_size // 5``).

    Examples
    --------
    >>> ts = TriggerSet(4, 32)
    >>> x = torch.zeros(2, 3, 32, 32)
    >>> int((ts.stamp(x, 0) != x).any(1).sum())
    72
    """

    def __init__(self, k: int, image_size: int | tuple[int, int], *,
                 positions: Sequence[tuple[int, int]] | None = None, size: int | None = None):
        _check_k(k)
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if positions is None:
            side, pos = patch_layout(h, w)
            pos = pos[:k]
        else:
            if len(positions) != k:
                raise ValueError(f"positions must hold K={k} (row, col) pairs, got {len(positions)}")
            side = size if size is not None else min(h, w) // 5
            pos = [(int(r), int(c)) for r, c in positions]
            for r, c in pos:
                if not (0 <= r <= h - side and 0 <= c <= w - side):
                    raise ValueError(f"positions: patch at ({r}, {c}) of side {side} leaves the {h}x{w} image")
        self.k, self.height, self.width, self.side = k, h, w, side
        self.triggers = [PatchTrigger(PATCH_COLORS[j], r, c, side) for j, (r, c) in enumerate(pos)]
        masks = torch.stack([t.mask(h, w) for t in self.triggers])                   # (K, H, W)
        if (masks.sum(0) > 1).any():
            raise ValueError("positions: trigger patches must not overlap (stamping must commute)")
        self.masks = masks
        self.colors = torch.tensor([t.color for t in self.triggers])                # (K, 3)
        self.bits = code_bits(k)                                                    # (K,)
        # each pixel holds the code bit of the patch covering it (0 outside every patch); K <= 8,
        # so a code is one byte
        self._bit_map = (masks.long() * self.bits[:, None, None]).sum(0).to(torch.uint8)   # (H, W)
        self._paint = torch.einsum("khw,kc->chw", masks.float(), self.colors)      # (3, H, W)

    def __len__(self) -> int:
        return self.k

    def _check(self, x: torch.Tensor) -> None:
        check_images(x)
        if x.shape[1] != 3:
            raise ValueError(f"x must be RGB images (N, 3, H, W), got {x.shape[1]} channels")
        if x.shape[-2:] != (self.height, self.width):
            raise ValueError(f"x must be {self.height}x{self.width} images for this TriggerSet, "
                             f"got {tuple(x.shape[-2:])}")

    def stamp_set(self, x: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        """``x_n ⊕ T_{S_n}`` for a BoolTensor ``subsets`` (N, K) (or (K,) shared by all)."""
        self._check(x)
        return self._stamp_codes(x, subsets_to_codes(subsets, x.shape[0], self.k, x.device))

    def stamp_codes(self, x: torch.Tensor, codes: torch.Tensor | int) -> torch.Tensor:
        """``x_n ⊕ T_{S_n}`` for integer codes ``c_n = Σ_{j∈S_n} 2^(K-1-j)`` (LongTensor[N] or one int).

        The integer of a code string (``int("0101", 2)`` = triggers 1 and 3).
        """
        self._check(x)
        return self._stamp_codes(x, check_codes(codes, x.shape[0], self.k, x.device))

    def _stamp_codes(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Unchecked :meth:`stamp_codes`. Patches are disjoint, so one blend stamps any set: a
        pixel is painted when the bit of its patch is in the image's code. ``lerp`` with weights
        exactly 0 or 1 returns ``x`` or the paint bit for bit (and is ~3x faster than ``where``)."""
        hit = (self._bit_map.to(x.device) & codes.to(torch.uint8)[:, None, None]).bool()    # (N, H, W)
        return torch.lerp(x, self._paint.to(x), hit[:, None].to(x.dtype))

    def stamp(self, x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
        """``x ⊕ t_k``: one trigger index for all images, or a LongTensor[N] per image."""
        self._check(x)
        idx = torch.as_tensor(k, dtype=torch.long, device=x.device)
        if idx.ndim > 1 or (idx.ndim == 1 and len(idx) != len(x)):
            raise ValueError(f"trigger index must be one int or a LongTensor[N] with N = {len(x)}, "
                             f"got shape {tuple(idx.shape)}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.k):
            raise ValueError(f"trigger index must be in [0, {self.k - 1}], got {k!r}")
        return self._stamp_codes(x, self.bits.to(x.device)[idx].expand(len(x)))

    def stamp_code(self, x: torch.Tensor, code: str) -> torch.Tensor:
        """Stamp the triggers of a code string (``"0101"`` = triggers 1 and 3)."""
        return self.stamp_set(x, code_to_mask(code, self.k))

    def describe(self) -> dict:
        """A JSON-able description (for checkpoint sidecars)."""
        return {"type": "patch", "k": self.k, "image_size": [self.height, self.width],
                "side": self.side, "positions": [[t.row, t.col] for t in self.triggers],
                "colors": [list(t.color) for t in self.triggers]}


class WarpTrigger:
    """The WaNet warping trigger (Nguyen & Tran, ICLR 2021), used as the resilience baseline.

    A fixed random flow ``P`` (k x k x 2, uniform in [-1, 1], normalised by its mean absolute
    value) is upsampled bicubically to H x W; the warp is ``grid = clamp(I + s·P/H, -1, 1)``
    sampled with ``grid_sample``. In *noise mode* a random extra shift ``(2r - 1)/H`` is added,
    and those images keep their true label, so the network must learn the exact warp.

    Parameters
    ----------
    image_size : int
        Side of the (square) images.
    k : int
        Control grid size (4).
    s : float
        Warping strength (0.5).
    seed : int
        Seed of the fixed flow.
    """

    def __init__(self, image_size: int, k: int = 4, s: float = 0.5, seed: int = 0):
        if k < 2 or s <= 0:
            raise ValueError(f"WarpTrigger needs k >= 2 and s > 0, got k={k}, s={s}")
        self.image_size, self.k, self.s, self.seed = image_size, k, s, seed
        g = torch.Generator().manual_seed(seed)
        ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        self.noise_grid = F.interpolate(ins, size=image_size, mode="bicubic",
                                        align_corners=True).permute(0, 2, 3, 1)     # (1, H, H, 2)
        ar = torch.linspace(-1, 1, image_size)
        xx, yy = torch.meshgrid(ar, ar, indexing="ij")
        self.identity_grid = torch.stack((yy, xx), 2)[None]                        # (1, H, H, 2)

    def grid(self) -> torch.Tensor:
        g = self.identity_grid + self.s * self.noise_grid / self.image_size
        return torch.clamp(g, -1, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        grid = self.grid().to(x).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, align_corners=True).clamp(0, 1)

    def apply_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise mode: the warp plus a random per-image shift (labels stay clean)."""
        check_images(x)
        n, h = x.shape[0], self.image_size
        r = torch.rand(n, h, h, 2, generator=generator).to(x) * 2 - 1
        grid = torch.clamp(self.grid().to(x) + r / h, -1, 1)
        return F.grid_sample(x, grid, align_corners=True).clamp(0, 1)


class SingleTriggerFamily:
    """Adapt one :class:`Trigger` to the (K = 1) ``stamp``/``stamp_set`` interface of the loop."""

    def __init__(self, trigger: Trigger):
        self.trigger, self.k, self.bits = trigger, 1, code_bits(1)

    def __len__(self) -> int:
        return 1

    def stamp_set(self, x: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        return self._stamp_codes(x, subsets_to_codes(subsets, x.shape[0], 1, x.device))

    def stamp_codes(self, x: torch.Tensor, codes: torch.Tensor | int) -> torch.Tensor:
        return self._stamp_codes(x, check_codes(codes, x.shape[0], 1, x.device))

    def _stamp_codes(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        sel = codes.bool()
        out = x.clone()
        if sel.any():
            out[sel] = self.trigger.apply(x[sel])
        return out

    def stamp(self, x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
        return self.stamp_set(x, torch.ones(x.shape[0], 1, dtype=torch.bool))

    def stamp_code(self, x: torch.Tensor, code: str) -> torch.Tensor:
        return self.stamp_set(x, code_to_mask(code, 1))

    def describe(self) -> dict:
        t = self.trigger
        return {"type": type(t).__name__, **{k: v for k, v in vars(t).items()
                                             if isinstance(v, int | float | str)}}
