"""The guidance core of Subject-Agnostic Guidance: pure tensor and string operations.

Notation (paper, Sec. 3): ``x_t`` the noisy sample, diffusion time ``t`` in [0, 1] with
``t = 1`` pure noise; ``c`` the subject-aware condition, ``c0`` the subject-agnostic one,
``phi`` the null condition; ``w`` the CFG weight in the Imagen convention
``(1 + w) cond - w uncond`` (diffusers' ``guidance_scale = 1 + w``).

Not to be confused with *Self-Attention Guidance* (diffusers' ``StableDiffusionSAGPipeline``,
``sag_scale``): a different paper.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

TIME_MODES = ("diffusion_time", "step_fraction")


def guidance_scale_to_w(guidance_scale: float) -> float:
    """diffusers' ``guidance_scale`` s to the paper's ``w`` (``s = 1 + w``). The one place
    the two conventions meet (spec pitfall 1)."""
    return float(guidance_scale) - 1.0


def dual_cfg(eps_c: torch.Tensor | None, eps_c0: torch.Tensor | None, eps_null: torch.Tensor | None,
             w: float, w_t: float) -> torch.Tensor:
    """Dual classifier-free guidance, Eqs. (2) and (4).

    Eq. (2): ``eps_bar = (1 + w_t) eps(x_t, c) - w_t eps(x_t, c0)``;
    Eq. (4): ``eps_tilde = (1 + w) eps_bar - w eps(x_t, phi)``.

    Parameters
    ----------
    eps_c : Tensor or None
        ``eps(x_t, c)``, the subject-aware prediction. May be ``None`` when ``w_t == -1``
        (it has weight 0 and is never computed).
    eps_c0 : Tensor or None
        ``eps(x_t, c0)``, the subject-agnostic prediction. May be ``None`` when ``w_t == 0``.
    eps_null : Tensor or None
        ``eps(x_t, phi)``, the unconditional prediction. May be ``None`` when ``w == 0``.
    w : float
        The null-CFG weight (Imagen convention).
    w_t : float
        The dual weight of Eq. (3) at this step.

    Returns
    -------
    Tensor
        ``eps_tilde``, same shape as the inputs. The coefficients sum to 1 (affine).

    Examples
    --------
    >>> one, zero = torch.ones(1), torch.zeros(1)
    >>> dual_cfg(one, zero, zero, w=2.0, w_t=0.5)
    tensor([4.5000])
    """
    eps_bar = dual_cfg_bar(eps_c, eps_c0, w_t)
    if w == 0:
        return eps_bar  # eps_null has weight 0 (and may be None)
    if eps_null is None:
        raise ValueError(f"eps_null is required when w = {w} is not 0")
    return (1 + w) * eps_bar - w * eps_null


def dual_cfg_bar(eps_c: torch.Tensor | None, eps_c0: torch.Tensor | None, w_t: float) -> torch.Tensor:
    """Eq. (2) alone: ``eps_bar = (1 + w_t) eps_c - w_t eps_c0``, skipping a zero-weight term."""
    if w_t == -1:
        if eps_c0 is None:
            raise ValueError("eps_c0 is required when w_t == -1 (early, subject-agnostic phase)")
        return eps_c0
    if w_t == 0:
        if eps_c is None:
            raise ValueError("eps_c is required when w_t == 0 (plain CFG on the subject prompt)")
        return eps_c
    if eps_c is None or eps_c0 is None:
        raise ValueError(f"both eps_c and eps_c0 are required when w_t = {w_t} is neither 0 nor -1")
    return (1 + w_t) * eps_c - w_t * eps_c0


def conditions_needed(w_t: float, with_uncond: bool = True) -> tuple[str, ...]:
    """The conditions a step evaluates, in batch order: ``("uncond", "agnostic")`` when
    ``w_t == -1``, ``("uncond", "cond")`` when ``w_t == 0``, else all three.
    ``with_uncond=False`` (``w = 0``, no null guidance) drops ``"uncond"``.

    This is what makes SAG cost 2 network evaluations per step at ``r = 0``, like CFG.
    """
    if w_t == -1:
        names = ("uncond", "agnostic")
    elif w_t == 0:
        names = ("uncond", "cond")
    else:
        names = ("uncond", "agnostic", "cond")
    return names if with_uncond else names[1:]


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_ref: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, as in diffusers), applied after Eq. (4) with
    ``eps_bar`` as the reference (spec pitfall 6; not in the SAG paper)."""
    dims = list(range(1, noise_ref.ndim))
    std_ref = noise_ref.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_ref / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


@dataclass(frozen=True)
class SAGSchedule:
    """The piecewise-constant dual weight of Eq. (3).

    ``w_t = r`` for ``0 <= t <= T`` (late, low-noise steps: the subject is re-introduced) and
    ``w_t = -1`` for ``T < t <= 1`` (early steps: guided by ``c0`` alone). The boundary is
    closed on the subject side.

    Parameters
    ----------
    T : float
        Guidance timing in [0, 1]. ``T = 1`` (with ``r = 0``) is plain CFG on ``c``;
        ``T = 0`` is CFG on ``c0`` (the class prompt alone). The paper's default is
        uncertain (0.9 per one summary of the PDF).
    r : float
        Guidance weight in the late phase, ``r >= -1``. ``r = 0`` is the default (2 network
        evaluations per step); ``r in (-1, 0)`` interpolates towards ``c0``; ``r > 0``
        extrapolates towards the subject.
    time_mode : {"diffusion_time", "step_fraction"}
        How a sampler step maps to ``t``: the scheduler's own time (``timestep /
        num_train_timesteps``, or ``sigma`` for flow matching), or ``1 - i / N`` at step ``i``
        of ``N``.

    Examples
    --------
    >>> s = SAGSchedule(T=0.6, r=0.0)
    >>> s.weight(0.6), s.weight(0.7)
    (0.0, -1.0)
    """

    T: float = 0.9
    r: float = 0.0
    time_mode: str = "diffusion_time"

    def __post_init__(self) -> None:
        if not isinstance(self.T, (int, float)) or not math.isfinite(self.T) or not 0 <= self.T <= 1:
            raise ValueError(f"sag_T (T) must be a number in [0, 1], got {self.T!r}")
        if not isinstance(self.r, (int, float)) or not math.isfinite(self.r):
            raise ValueError(f"sag_r (r) must be a finite number >= -1, got {self.r!r}")
        if self.r < -1:
            raise ValueError(f"sag_r (r) must be >= -1, got {self.r}: r < -1 extrapolates away from the "
                             "subject (towards c0 beyond it), which Eq. (2) does not intend")
        if self.time_mode not in TIME_MODES:
            raise ValueError(f"sag_time_mode (time_mode) must be one of {TIME_MODES}, got {self.time_mode!r}")

    def weight(self, t: float) -> float:
        """``w_t`` of Eq. (3) at diffusion time ``t`` (1 = noise, 0 = clean)."""
        return float(self.r) if t <= self.T else -1.0

    def time_of_step(self, i: int, num_steps: int, timestep: Any = None, scheduler: Any = None) -> float:
        """Diffusion time ``t`` of step ``i`` (0-based) of ``num_steps``.

        In ``"diffusion_time"`` mode: ``sigma`` for flow-matching schedulers (``t`` already in
        [0, 1]), else ``timestep / scheduler.config.num_train_timesteps``. In
        ``"step_fraction"`` mode: ``1 - i / num_steps``.
        """
        if self.time_mode == "step_fraction":
            return 1.0 - i / num_steps
        if scheduler is None or timestep is None:
            raise ValueError("time_mode='diffusion_time' needs the scheduler and the step's timestep")
        return diffusion_time(timestep, scheduler)


def diffusion_time(timestep: Any, scheduler: Any) -> float:
    """Map a diffusers scheduler timestep to ``t`` in [0, 1] (1 = noise).

    DDPM-family discrete schedulers (DDIM, PNDM, Euler, DPM-Solver...):
    ``t = timestep / num_train_timesteps``. Flow-matching schedulers (SD3, FLUX) already use
    ``t = sigma = timestep / num_train_timesteps``, so the same formula holds.
    """
    n_train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if not n_train:
        raise ValueError("scheduler.config.num_train_timesteps is needed for time_mode='diffusion_time'; "
                         "use time_mode='step_fraction' for this scheduler")
    t = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
    return min(max(t / float(n_train), 0.0), 1.0)


def make_agnostic_prompt(prompt: str, placeholder: str, class_word: str, tokenizer: Any = None) -> str:
    """The subject-agnostic prompt ``c0`` of Sec. 3.1: the placeholder replaced by its class.

    ``"a pencil sketch of S*"`` becomes ``"a pencil sketch of a dog"``. Every other token is
    kept unchanged. Handles

    - textual-inversion placeholders, including multi-vector ones after diffusers'
      ``maybe_convert_prompt`` expansion (``"<tok> <tok>_1 <tok>_2"`` is removed as a whole);
    - DreamBooth rare tokens before a class noun: ``"a sks dog"`` becomes ``"a dog"``, not
      ``"a dog dog"`` (the rare token is dropped when the class word already follows it).

    Parameters
    ----------
    prompt : str
        The subject-aware prompt ``c``.
    placeholder : str
        The pseudo-word (``"S*"``, ``"<cat-toy>"``, ``"sks"``).
    class_word : str
        The generic description ("a dog", "dog", "stuffed animal"). An article is added
        when the placeholder is not already preceded by one.
    tokenizer : optional
        A tokenizer; when given, the placeholder must be a single word it knows, or an
        added token (checked so that a typo does not silently make ``c0 == c``).

    Raises
    ------
    ValueError
        If the placeholder does not occur in the prompt (SAG would silently be a no-op),
        or the class word or placeholder is empty.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not placeholder or not placeholder.strip():
        raise ValueError("placeholder_token must be a non-empty string")
    if not class_word or not class_word.strip():
        raise ValueError("class_word must be a non-empty string (e.g. 'dog'): it replaces the placeholder")
    if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        vocab = tokenizer.get_vocab()
        if placeholder not in vocab and len(tokenizer.tokenize(placeholder)) == 0:
            raise ValueError(f"placeholder_token {placeholder!r} is unknown to the tokenizer")
    ph = re.escape(placeholder)
    # The placeholder plus its multi-vector sub-tokens "<tok>_1 <tok>_2 ..." (maybe_convert_prompt).
    pattern = re.compile(rf"(?<!\S){ph}(?:\s+{ph}_\d+)*(?!\S)")
    if not pattern.search(prompt):
        raise ValueError(f"placeholder_token {placeholder!r} does not occur in prompt {prompt!r}: "
                         "the agnostic prompt would equal the prompt and SAG would do nothing")
    class_word = class_word.strip()
    noun = re.sub(r"^(a|an|the)\s+", "", class_word, flags=re.IGNORECASE)
    article = "an" if noun[:1].lower() in "aeiou" else "a"

    def replace(m: re.Match) -> str:
        before = prompt[:m.start()].rstrip()
        after = prompt[m.end():].lstrip()
        if after.lower().startswith(noun.lower()) and (len(after) == len(noun) or not after[len(noun)].isalnum()):
            return ""  # DreamBooth "a sks dog": drop the rare token, the class noun follows
        if re.search(r"(?:^|\s)(a|an|the)$", before, flags=re.IGNORECASE):
            return noun  # "a photo of a S*" -> "a photo of a dog"
        return class_word if class_word != noun else f"{article} {noun}"

    out = pattern.sub(replace, prompt)
    return re.sub(r"\s{2,}", " ", out).strip()


def make_agnostic_prompts(prompt: str | Sequence[str], placeholder: str, class_word: str,
                          tokenizer: Any = None) -> list[str]:
    """:func:`make_agnostic_prompt` over a prompt or a list of prompts."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return [make_agnostic_prompt(p, placeholder, class_word, tokenizer) for p in prompts]
