"""Configuration of SAG sampling at full scale (SD 1.5) and its CPU preset."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SAGConfig:
    """Sampling settings of Subject-Agnostic Guidance.

    Full-scale defaults are ours where the paper is silent (docs/sag.md, Deviations): DDIM with 50
    steps and ``guidance_scale = 7.5`` on SD 1.5 at 512 px. ``T = 0.9, r = 0`` follows one
    summary of the paper; the default ``T`` is uncertain (see docs/sag.md).

    Attributes
    ----------
    sag_T, sag_r : float
        Eq. (3): ``c0`` alone guides ``t > T``; the late weight is ``r``.
    guidance_scale : float
        diffusers' ``s = 1 + w`` (Eq. 4).
    num_inference_steps : int
    height, width : int
    time_mode : str
        ``"diffusion_time"`` (faithful) or ``"step_fraction"``.
    """

    sag_T: float = 0.9
    sag_r: float = 0.0
    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    height: int = 512
    width: int = 512
    time_mode: str = "diffusion_time"

    @classmethod
    def cpu(cls) -> SAGConfig:
        """The ShapesWorld reproduction's sampler: 20 DDIM steps, ``w = 3`` (s = 4), 16 px."""
        return cls(guidance_scale=4.0, num_inference_steps=20, height=16, width=16)

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments for ``SubjectAgnosticStableDiffusionPipeline.__call__``."""
        return {"sag_T": self.sag_T, "sag_r": self.sag_r, "guidance_scale": self.guidance_scale,
                "num_inference_steps": self.num_inference_steps, "height": self.height, "width": self.width,
                "sag_time_mode": self.time_mode}
