"""Subject-Agnostic Guidance as a diffusers modular guider (``diffusers.guiders``).

Mirrors ``ClassifierFreeGuidance``: the guider says how many conditions a step needs
(2 or 3, from Eq. 3), prepares one batch per condition and combines the predictions with
Eqs. (2) and (4). Data fields are tuples ``(cond, uncond, agnostic)``: the first two are
what CFG blocks already pass, the third is the subject-agnostic condition ``c0``.

Only defined when the installed diffusers has the guider API (``diffusers >= 0.35``).
"""

from __future__ import annotations

from typing import Any

import torch

from cvpr24.common import optional_import
from cvpr24.sag.guidance import (
    SAGSchedule,
    conditions_needed,
    dual_cfg,
    dual_cfg_bar,
    rescale_noise_cfg,
)

optional_import("diffusers", "sag")
try:
    from diffusers.configuration_utils import register_to_config
    from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput
except ImportError as e:  # pragma: no cover - depends on the installed diffusers
    raise ImportError("SubjectAgnosticGuidance needs diffusers >= 0.35 (the modular guider API); "
                      "use SubjectAgnosticStableDiffusionPipeline with older versions") from e

# Index of each prediction in the (cond, uncond, agnostic) data tuples.
_TUPLE_INDEX = {"pred_cond": 0, "pred_uncond": 1, "pred_agnostic": 2}
_PRED_OF = {"cond": "pred_cond", "uncond": "pred_uncond", "agnostic": "pred_agnostic"}


class SubjectAgnosticGuidance(BaseGuidance):
    """Dual classifier-free guidance (Eqs. 2-4) for diffusers modular pipelines.

    Parameters
    ----------
    guidance_scale : float, default 7.5
        diffusers' scale ``s = 1 + w`` of the null guidance (Eq. 4).
    sag_T : float, default 0.9
        Guidance timing ``T`` (Eq. 3).
    sag_r : float, default 0.0
        Late-phase weight ``r`` (Eq. 3).
    time_mode : {"diffusion_time", "step_fraction"}
        ``t = timestep / num_train_timesteps`` or ``t = 1 - step / num_inference_steps``.
    num_train_timesteps : int, default 1000
        The denoiser's training horizon, for ``"diffusion_time"``.
    guidance_rescale : float, default 0.0
        Applied after Eq. (4) against ``eps_bar``.
    """

    _input_predictions = ["pred_cond", "pred_uncond", "pred_agnostic"]

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, sag_T: float = 0.9, sag_r: float = 0.0,
                 time_mode: str = "diffusion_time", num_train_timesteps: int = 1000,
                 guidance_rescale: float = 0.0, start: float = 0.0, stop: float = 1.0, enabled: bool = True):
        super().__init__(start, stop, enabled)
        self.schedule = SAGSchedule(T=sag_T, r=sag_r, time_mode=time_mode)
        self.guidance_scale = guidance_scale
        self.num_train_timesteps = num_train_timesteps
        self.guidance_rescale = guidance_rescale

    # --- the schedule at the current step -----------------------------------------------------

    def current_time(self) -> float:
        """Diffusion time ``t`` of the step set by ``set_state``."""
        if self.schedule.time_mode == "step_fraction":
            return 1.0 - self._step / self._num_inference_steps
        ts = self._timestep
        t = float(ts.flatten()[0].item() if isinstance(ts, torch.Tensor) else ts)
        return min(max(t / self.num_train_timesteps, 0.0), 1.0)

    def current_weight(self) -> float:
        """``w_t`` of Eq. (3) at the current step."""
        if self._timestep is None and self._step is None:
            raise ValueError("call set_state(step, num_inference_steps, timestep) before guiding")
        return self.schedule.weight(self.current_time())

    def _names(self) -> list[str]:
        names = conditions_needed(self.current_weight(), with_uncond=self._is_null_cfg_enabled())
        return [_PRED_OF[n] for n in names]

    def _is_null_cfg_enabled(self) -> bool:
        return self._enabled and self.guidance_scale != 1.0

    # --- BaseGuidance API ------------------------------------------------------------------------

    @property
    def num_conditions(self) -> int:
        return len(self._names())

    @property
    def is_conditional(self) -> bool:
        names = self._names()
        return self._count_prepared <= len(names) and names[self._count_prepared - 1] != "pred_uncond"

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, ...]]) -> list[Any]:
        names = self._names()
        self._check_agnostic_given(data, names)
        return [self._prepare_batch(data, _TUPLE_INDEX[name], name) for name in names]

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, str | tuple[str, ...]]) -> list[Any]:
        names = self._names()
        self._check_agnostic_given(input_fields, names)
        return [self._prepare_batch_from_block_state(input_fields, data, _TUPLE_INDEX[name], name) for name in names]

    def _check_agnostic_given(self, fields: dict[str, Any], names: list[str]) -> None:
        """A step that needs ``c0`` must get it as the third entry of every tuple field."""
        if "pred_agnostic" not in names:
            return
        short = [k for k, v in fields.items() if isinstance(v, tuple) and len(v) < 3]
        if short:
            raise ValueError(
                f"SubjectAgnosticGuidance needs the subject-agnostic condition c0 at this step (w_t = "
                f"{self.current_weight():g}), but the fields {short} are (cond, uncond) pairs; give each as a "
                "(cond, uncond, agnostic) tuple. Denoise blocks written for CFG pass pairs only: with them, "
                "use sag_T=1, sag_r=0 (plain CFG).")

    def forward(self, pred_cond: torch.Tensor | None = None, pred_uncond: torch.Tensor | None = None,
                pred_agnostic: torch.Tensor | None = None) -> GuiderOutput:
        w_t = self.current_weight()
        w = self.guidance_scale - 1.0 if self._is_null_cfg_enabled() else 0.0
        pred = dual_cfg(pred_cond, pred_agnostic, pred_uncond, w, w_t)
        if self.guidance_rescale > 0.0 and w != 0:
            pred = rescale_noise_cfg(pred, dual_cfg_bar(pred_cond, pred_agnostic, w_t), self.guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)
