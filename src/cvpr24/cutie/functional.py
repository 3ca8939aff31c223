"""Stateless tensor operations of Cutie: memory similarity, top-k softmax, readout, soft
aggregation, padding to the stride-16 grid, and the float32 islands of mixed precision.

Equation labels (Eq. 1), (Eq. 2), (Eq. 14) are defined in ``docs/cutie.md``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

HALF = (torch.float16, torch.bfloat16)


def no_autocast(x: torch.Tensor) -> torch.autocast:
    """A context with autocast off on ``x``'s device: what runs inside it stays in the dtype of
    its inputs (float32 islands under AMP, as the official code keeps them)."""
    return torch.autocast(x.device.type, enabled=False)


def float32_island(fn):
    """Run ``fn`` with autocast off and its half-precision tensor arguments cast to float32
    (float64 inputs stay float64)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        args = [a.float() if isinstance(a, torch.Tensor) and a.dtype in HALF else a for a in args]
        with no_autocast(tensors[0]):
            return fn(*args, **kwargs)

    return wrapped


AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def check_amp_dtype(name: str) -> None:
    """Refuse an ``amp_dtype`` other than float16 and bfloat16."""
    if name not in AMP_DTYPES:
        raise ValueError(f"amp_dtype: expected one of {sorted(AMP_DTYPES)}, got {name!r}")


def autocast_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of mixed precision on ``device``. Refuses any device but CUDA (the
    official AMP path is CUDA's; CPU autocast is neither what the released weights were
    evaluated with nor tested here) and bfloat16 on GPUs without it."""
    check_amp_dtype(name)
    if device.type != "cuda":
        raise ValueError(
            f"amp: mixed precision runs on CUDA only, but the model is on {device}; "
            "use amp=False (--amp needs --device cuda)"
        )
    if name == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp_dtype: {torch.cuda.get_device_name(device)} has no bfloat16 support")
    return AMP_DTYPES[name]


@float32_island
def similarity(
    mem_key: torch.Tensor,
    mem_shrinkage: torch.Tensor | None,
    query_key: torch.Tensor,
    query_selection: torch.Tensor | None,
) -> torch.Tensor:
    """Anisotropic L2 similarity between memory and query tokens (Eq. 1).

    ``s_ij = -(d_i / sqrt(C_k)) * sum_c e_cj (k_ci - q_cj)^2``, computed in the expanded form
    ``d_i (-sum_c e_cj k_ci^2 + 2 sum_c k_ci e_cj q_cj - sum_c e_cj q_cj^2) / sqrt(C_k)`` so
    that it is two matrix products.

    Parameters
    ----------
    mem_key : (B, C_k, N...) memory keys ``k``; trailing dims are flattened to N tokens.
    mem_shrinkage : (B, 1, N...) shrinkage ``d >= 1``, or None for ``d = 1``.
    query_key : (B, C_k, HW...) query keys ``q``.
    query_selection : (B, C_k, HW...) selection ``e`` in (0, 1), or None for ``e = 1``
        (then the query-only term is dropped: it is constant over memory tokens).

    Returns
    -------
    (B, N, HW) similarities.
    """
    c_k = mem_key.shape[1]
    mk = mem_key.flatten(start_dim=2).transpose(1, 2)  # B, N, C_k
    qk = query_key.flatten(start_dim=2)  # B, C_k, HW
    if query_selection is not None:
        qe = query_selection.flatten(start_dim=2)
        s = -(mk.pow(2) @ qe) + 2 * (mk @ (qk * qe)) - (qe * qk.pow(2)).sum(1, keepdim=True)
    else:
        s = -mk.pow(2).sum(2, keepdim=True) + 2 * (mk @ qk)
    if mem_shrinkage is not None:
        s = s * mem_shrinkage.flatten(start_dim=1).unsqueeze(2)
    return s / math.sqrt(c_k)


def softmax_memory(sim: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Affinity ``W = softmax_i(s_ij)`` over the memory axis (dim 1) of a (B, N, HW) similarity.

    With ``top_k`` only the k largest similarities of each query column take part; the other
    entries of ``W`` are exactly 0 (inference). ``top_k=None`` is the full softmax (training).
    """
    if top_k is None or top_k >= sim.shape[1]:
        return torch.softmax(sim, dim=1)
    values, indices = torch.topk(sim, k=top_k, dim=1)
    weights = torch.softmax(values, dim=1)
    return torch.zeros_like(sim).scatter_(1, indices, weights)


@float32_island
def readout(affinity: torch.Tensor, mem_value: torch.Tensor) -> torch.Tensor:
    """Pixel readout ``r_kj = sum_i W_ij v_k,i`` (Eq. 2), one affinity shared by all objects.

    affinity: (B, N, HW); mem_value: (B, K, C_v, N) -> (B, K, C_v, HW).
    """
    b, k, c, n = mem_value.shape
    return (mem_value.reshape(b, k * c, n) @ affinity).view(b, k, c, -1)


@float32_island
def aggregate(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Soft aggregation of per-object probabilities into logits over {bg, objects} (Eq. 14).

    ``p_0 = prod_k (1 - p_k)``; every probability (background included) is clamped to
    ``[1e-7, 1 - 1e-7]`` and mapped to ``log(p / (1 - p))``, so ``softmax`` of the result is
    ``P_k = o_k / sum_j o_j`` with odds ``o = p / (1 - p)``. The background is inserted at
    index 0 of ``dim``. Always computed in float32.
    """
    prob = prob.float()
    bg = torch.prod(1 - prob, dim=dim, keepdim=True)
    p = torch.cat([bg, prob], dim).clamp(1e-7, 1 - 1e-7)
    return torch.log(p / (1 - p))


@float32_island
def aggregate_logits(
    logits: torch.Tensor, dim: int, selector: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 14 from per-object logits ``z_k`` in log space, without the probability clamp.

    ``log o_k = z_k`` and ``log o_0 = log p_0 - log(1 - p_0)`` with
    ``log p_0 = sum_k log sigmoid(-z_k)``: the same values as :func:`aggregate` wherever no
    probability reaches the clamp, but with a gradient everywhere (the clamp has none, so a
    model whose object logits all fall below -16 receives no gradient at all and stays
    all-background). Used for training only. ``selector`` (broadcastable, 0 = padding object)
    removes objects.
    """
    z = logits.float()
    if selector is not None:
        z = z.masked_fill(selector == 0, -1e4)
    log_bg = F.logsigmoid(-z).sum(dim, keepdim=True).clamp(max=-1e-30)
    return torch.cat([log_bg - torch.log(-torch.expm1(log_bg)), z], dim)


def pad_divide_by(x: torch.Tensor, d: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims up to multiples of ``d``; the extra pixel of an odd padding
    goes to the bottom/right. Returns the padded tensor and ``(left, right, top, bottom)``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % d, (-w) % d
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Inverse of :func:`pad_divide_by` on the last two dims."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def chunk_slices(n: int, chunk_size: int) -> list[slice]:
    """Slices covering ``range(n)`` in chunks of ``chunk_size`` (one slice when < 1)."""
    if chunk_size < 1 or chunk_size >= n:
        return [slice(0, n)]
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
