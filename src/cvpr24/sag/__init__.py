"""Subject-Agnostic Guidance (Chan et al., CVPR 2024) for subject-driven text-to-image.

Dual classifier-free guidance with a subject-agnostic condition ``c0``: early, high-noise
steps are guided by the prompt without the subject ("a pencil sketch of a dog"), late steps
bring the subject back. Not to be confused with Self-Attention Guidance (diffusers'
``StableDiffusionSAGPipeline``).

The guidance core imports only torch; the diffusers pipelines are imported lazily
(``from cvpr24.sag import SubjectAgnosticStableDiffusionPipeline`` needs ``cvpr24[sag]``).
"""

from __future__ import annotations

from typing import Any

from cvpr24.sag.config import SAGConfig
from cvpr24.sag.guidance import (
    SAGSchedule,
    conditions_needed,
    diffusion_time,
    dual_cfg,
    guidance_scale_to_w,
    make_agnostic_prompt,
    make_agnostic_prompts,
)

_LAZY = {
    "SubjectAgnosticStableDiffusionPipeline": "cvpr24.sag.pipeline",
    "sag_blip_diffusion": "cvpr24.sag.pipeline",
    "ip_adapter_scale_zero": "cvpr24.sag.pipeline",
    "SubjectAgnosticGuidance": "cvpr24.sag.guider",
    "ClipDinoScorer": "cvpr24.sag.metrics",
}

__all__ = [
    "SAGConfig",
    "SAGSchedule",
    "conditions_needed",
    "diffusion_time",
    "dual_cfg",
    "guidance_scale_to_w",
    "make_agnostic_prompt",
    "make_agnostic_prompts",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cvpr24.sag' has no attribute {name!r}")
