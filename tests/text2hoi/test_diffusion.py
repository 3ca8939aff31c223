import math

import pytest
import torch

from cvpr24.text2hoi.diffusion import GaussianDiffusion, cosine_alpha_bar, cosine_betas


def test_cosine_betas_closed_form():
    betas = cosine_betas(1000)
    t = torch.arange(1000, dtype=torch.float64)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # (T9)
    expect = torch.tensor([min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in t.tolist()], dtype=torch.float64)
    assert torch.allclose(betas, expect, atol=1e-12)
    assert float(cosine_alpha_bar(0.0)) == pytest.approx(math.cos(0.008 / 1.008 * math.pi / 2) ** 2)
    assert float(betas[-1]) == 0.999


def test_betas_and_step_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
        variance_type="fixed_small", clip_sample=False,
    )
    d = GaussianDiffusion(1000)
    assert torch.allclose(d.betas.float(), ref.betas, atol=1e-7)
    g = torch.Generator().manual_seed(0)
    x_t, x0 = (torch.randn(2, 5, 7, generator=g, dtype=torch.float64) for _ in range(2))
    ref.set_timesteps(1000)
    # the step formula in float64: give diffusers our (float64) schedule, equal to its own to 1e-7
    ref.betas, ref.alphas, ref.alphas_cumprod = d.betas, d.alphas, d.alphas_cumprod
    for t in (999, 500, 10, 1, 0):
        # diffusers draws its variance noise from the generator: give both the same z
        expect = ref.step(x0, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        ours = d.p_step(x0, x_t, t, noise)
        # t = 1: diffusers uses the unclipped variance, which equals the clipped one there
        assert torch.allclose(ours, expect, atol=1e-10), t


def test_oracle_model_recovers_x0_at_t0():
    d = GaussianDiffusion(100)
    x0 = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    out = d.sample(lambda xs, t: [x0], [tuple(x0.shape)], generator=torch.Generator().manual_seed(2))[0]
    assert torch.allclose(out, x0, atol=1e-6)
    assert float(d.coef_x0[0]) == pytest.approx(1.0) and float(d.coef_xt[0]) == pytest.approx(0.0, abs=1e-12)
    ddim = d.sample(lambda xs, t: [x0], [tuple(x0.shape)], num_inference_steps=10, generator=torch.Generator().manual_seed(2))[0]
    assert torch.allclose(ddim, x0, atol=1e-6)


def test_q_sample_moments():
    d = GaussianDiffusion(1000)
    n = 100_000
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    t = torch.full((n,), 300, dtype=torch.long)
    xt = d.q_sample(x0, t, torch.randn(n, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    ab = float(d.alphas_cumprod[300])
    se_mean = math.sqrt((1 - ab) / n)
    assert abs(float(xt.mean()) - 2 * math.sqrt(ab)) < 3 * se_mean
    se_var = (1 - ab) * math.sqrt(2 / (n - 1))
    assert abs(float(xt.var()) - (1 - ab)) < 3 * se_var


def test_ddim_timesteps_and_determinism():
    d = GaussianDiffusion(1000)
    assert d.timesteps(50)[:2] == [980, 960] and d.timesteps(50)[-1] == 0 and len(d.timesteps(50)) == 50
    f = lambda xs, t: [0.5 * xs[0]]
    a = d.sample(f, [(2, 3)], num_inference_steps=20, generator=torch.Generator().manual_seed(4))[0]
    b = d.sample(f, [(2, 3)], num_inference_steps=20, generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_inference_steps"):
        d.timesteps(0)
