"""The Gaussian diffusion of TextHOM: cosine schedule (T9), q_sample, and samplers.

The ancestral sampler is the official x̂_0-parametrised DDPM step (T15), identical to
diffusers' ``DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample",
variance_type="fixed_small", clip_sample=False)``. DDIM (η = 0) on a strided subset of steps is
our faster option [X].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def cosine_alpha_bar(t: torch.Tensor | float, s: float = 0.008) -> torch.Tensor:
    """ᾱ(t) = cos²(((t + s)/(1 + s)) · π/2) for t ∈ [0, 1] (T9)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0.999), t = 0..T−1 (float64)."""
    t = torch.arange(num_steps, dtype=torch.float64)
    return (1 - cosine_alpha_bar((t + 1) / num_steps) / cosine_alpha_bar(t / num_steps)).clamp(max=max_beta)


class GaussianDiffusion:
    """Schedule tensors and the forward/reverse steps, for any number of tensors at once.

    All quantities are float64 internally and cast to the sample's dtype on use.
    """

    def __init__(self, num_steps: int = 1000) -> None:
        self.num_steps = num_steps
        self.betas = cosine_betas(num_steps)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.alphas_cumprod_prev = prev
        # (T15) posterior mean coefficients and the clipped log-variance
        self.coef_x0 = self.betas * prev.sqrt() / (1 - self.alphas_cumprod)
        self.coef_xt = (1 - prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)
        var = self.betas * (1 - prev) / (1 - self.alphas_cumprod)
        self.posterior_variance = var
        self.log_var_clipped = torch.log(torch.cat([var[1:2], var[1:]]))

    @staticmethod
    def _at(v: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = v.to(like.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        ab = self._at(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def p_step(
        self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """x_{t−1} = μ_t(x̂_0, x_t) + exp(½ log σ̃²_t) z, with z = 0 at t = 0 (T15)."""
        tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
        mean = self._at(self.coef_x0, tt, x_t) * x0_hat + self._at(self.coef_xt, tt, x_t) * x_t
        if t == 0 or noise is None:
            return mean
        return mean + torch.exp(0.5 * self._at(self.log_var_clipped, tt, x_t)) * noise

    def ddim_step(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """Deterministic DDIM (η = 0) from t to t_prev (t_prev = −1 returns x̂_0) [X]."""
        if t_prev < 0:
            return x0_hat
        ab, ab_prev = self.alphas_cumprod[t], self.alphas_cumprod[t_prev]
        eps = (x_t - ab.sqrt().to(x_t.dtype) * x0_hat) / (1 - ab).sqrt().to(x_t.dtype)
        return ab_prev.sqrt().to(x_t.dtype) * x0_hat + (1 - ab_prev).sqrt().to(x_t.dtype) * eps

    def timesteps(self, num_inference_steps: int | None) -> list[int]:
        """T−1..0 for the full chain, or an evenly strided subset (DDIM), descending."""
        if num_inference_steps is None or num_inference_steps >= self.num_steps:
            return list(range(self.num_steps - 1, -1, -1))
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        step = self.num_steps // num_inference_steps
        return list(range(0, num_inference_steps * step, step))[::-1]

    @torch.no_grad()
    def sample(
        self,
        denoise: Callable[[Sequence[torch.Tensor], torch.Tensor], Sequence[torch.Tensor]],
        shapes: Sequence[tuple[int, ...]],
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> list[torch.Tensor]:
        """Run the reverse chain on tensors of ``shapes`` jointly, from N(0, I).

        ``denoise(xs, t)`` returns x̂_0 for each tensor; ``t`` is a (B,) long tensor. The full
        chain (``num_inference_steps=None``) is the ancestral DDPM of T15; fewer steps use DDIM.
        """
        xs = [torch.randn(s, generator=generator, dtype=dtype).to(device) for s in shapes]
        steps = self.timesteps(num_inference_steps)
        ancestral = len(steps) == self.num_steps
        for i, t in enumerate(steps):
            tt = torch.full((shapes[0][0],), t, dtype=torch.long, device=device)
            x0s = denoise(xs, tt)
            if ancestral:
                noises = [torch.randn(s, generator=generator, dtype=dtype).to(device) if t > 0 else None for s in shapes]
                xs = [self.p_step(x0, x, t, z) for x0, x, z in zip(x0s, xs, noises, strict=True)]
            else:
                t_prev = steps[i + 1] if i + 1 < len(steps) else -1
                xs = [self.ddim_step(x0, x, t, t_prev) for x0, x in zip(x0s, xs, strict=True)]
        return xs
