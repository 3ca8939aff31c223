"""The guidance core: Eqs. (2)-(4), the schedule of Eq. (3), the agnostic prompt."""

from __future__ import annotations

import math

import pytest
import torch

from cvpr24.sag import SAGConfig, SAGSchedule, conditions_needed, dual_cfg, make_agnostic_prompt
from cvpr24.sag.guidance import diffusion_time, guidance_scale_to_w, make_agnostic_prompts

# --- dual_cfg (spec 6.1, 6.8) -------------------------------------------------------------------

def test_dual_cfg_closed_form_scalar():
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    assert dual_cfg(one, zero, zero, w=2.0, w_t=0.5).item() == pytest.approx(4.5)


def test_dual_cfg_special_weights():
    g = torch.Generator().manual_seed(0)
    c, c0, null = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    w = 3.0
    torch.testing.assert_close(dual_cfg(c, c0, null, w, -1.0), (1 + w) * c0 - w * null)
    torch.testing.assert_close(dual_cfg(c, c0, null, w, 0.0), (1 + w) * c - w * null)
    torch.testing.assert_close(dual_cfg(c, c0, null, 0.0, 0.7), 1.7 * c - 0.7 * c0)  # w = 0 gives eps_bar
    # Expanded form of the spec: (1+w)(1+w_t) c - (1+w) w_t c0 - w null.
    w_t = 0.4
    expected = (1 + w) * (1 + w_t) * c - (1 + w) * w_t * c0 - w * null
    torch.testing.assert_close(dual_cfg(c, c0, null, w, w_t), expected)


def test_dual_cfg_skips_unneeded_predictions():
    x = torch.randn(3)
    torch.testing.assert_close(dual_cfg(None, x, x, 2.0, -1.0), x)
    torch.testing.assert_close(dual_cfg(x, None, x, 2.0, 0.0), x)
    with pytest.raises(ValueError, match="eps_c0"):
        dual_cfg(x, None, x, 2.0, -1.0)
    with pytest.raises(ValueError, match="both"):
        dual_cfg(x, None, x, 2.0, 0.5)
    with pytest.raises(ValueError, match="eps_null"):
        dual_cfg(x, x, None, 2.0, 0.5)


@pytest.mark.parametrize("seed", range(5))
def test_dual_cfg_is_affine(seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(5, generator=g)
    w, w_t = float(torch.rand(1, generator=g) * 10), float(torch.rand(1, generator=g) * 3 - 1)
    torch.testing.assert_close(dual_cfg(v, v, v, w, w_t), v)


def test_dual_cfg_gradcheck():
    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(2, 3, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: dual_cfg(a, b, c, 2.5, 0.3), inputs)


def test_guidance_scale_convention():
    assert guidance_scale_to_w(7.5) == 6.5  # diffusers s = 1 + w


# --- the schedule (spec 6.2) --------------------------------------------------------------------

def test_schedule_boundary_is_closed_on_the_subject_side():
    s = SAGSchedule(T=0.6, r=0.25)
    assert s.weight(0.6) == 0.25
    assert s.weight(0.6 + 1e-6) == -1.0
    assert s.weight(0.0) == 0.25


def test_schedule_extremes():
    ts = torch.linspace(0, 1, 101).tolist()
    assert all(SAGSchedule(T=1.0, r=0.3).weight(t) == 0.3 for t in ts)
    assert all(SAGSchedule(T=0.0, r=0.3).weight(t) == -1.0 for t in ts if t > 0)


@pytest.mark.parametrize("kwargs,match", [
    ({"T": 1.5}, "sag_T"), ({"T": -0.1}, "sag_T"), ({"T": math.nan}, "sag_T"),
    ({"r": math.inf}, "sag_r"), ({"r": math.nan}, "sag_r"), ({"r": -1.5}, "extrapolates away from the subject"),
    ({"time_mode": "karras"}, "time_mode"),
])
def test_schedule_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAGSchedule(**kwargs)


def test_time_of_step_modes():
    class Sched:
        class config:  # noqa: N801 - mimics a diffusers config namespace
            num_train_timesteps = 1000
    s = SAGSchedule(T=0.5, time_mode="diffusion_time")
    assert s.time_of_step(0, 50, torch.tensor(981), Sched()) == pytest.approx(0.981)
    assert diffusion_time(torch.tensor(1), Sched()) == pytest.approx(0.001)
    assert SAGSchedule(time_mode="step_fraction").time_of_step(10, 50) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        diffusion_time(5, object())


def test_conditions_needed():
    assert conditions_needed(-1.0) == ("uncond", "agnostic")
    assert conditions_needed(0.0) == ("uncond", "cond")
    assert conditions_needed(0.5) == ("uncond", "agnostic", "cond")
    assert conditions_needed(0.0, with_uncond=False) == ("cond",)


# --- the agnostic prompt (spec 6.5) -------------------------------------------------------------

@pytest.mark.parametrize("prompt,placeholder,cls,expected", [
    ("a pencil sketch of S*", "S*", "dog", "a pencil sketch of a dog"),
    ("a photo of a S* in the jungle", "S*", "dog", "a photo of a dog in the jungle"),
    ("S* on the beach", "S*", "elephant", "an elephant on the beach"),
    ("a sks dog in the snow", "sks", "dog", "a dog in the snow"),  # DreamBooth: not "a dog dog"
    ("a <cat-toy> in the style of van gogh", "<cat-toy>", "toy", "a toy in the style of van gogh"),
    ("a <cat-toy> <cat-toy>_1 <cat-toy>_2 on a table", "<cat-toy>", "toy", "a toy on a table"),  # multi-vector
    ("a painting of S*", "S*", "a stuffed animal", "a painting of a stuffed animal"),
])
def test_make_agnostic_prompt(prompt, placeholder, cls, expected):
    assert make_agnostic_prompt(prompt, placeholder, cls) == expected


def test_agnostic_prompt_keeps_the_other_words():
    prompt = "a watercolor painting of S* wearing a red hat, trending on artstation"
    out = make_agnostic_prompt(prompt, "S*", "cat")
    assert out.split() == prompt.replace("S*", "a cat").split()
    assert "_1" not in make_agnostic_prompt("<t> <t>_1 <t>_2 and <t> <t>_1 <t>_2", "<t>", "dog")


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": "a photo of a dog", "placeholder": "S*", "class_word": "dog"}, "does not occur"),
    ({"prompt": "a photo of S*", "placeholder": "S*", "class_word": " "}, "class_word"),
    ({"prompt": "a photo of S*", "placeholder": "", "class_word": "dog"}, "placeholder_token"),
    ({"prompt": "a photo of S*x", "placeholder": "S*", "class_word": "dog"}, "does not occur"),  # whole words only
])
def test_make_agnostic_prompt_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_agnostic_prompt(**kwargs)


def test_make_agnostic_prompts_list():
    assert make_agnostic_prompts(["S* on a beach", "S* in snow"], "S*", "dog") == ["a dog on a beach",
                                                                                   "a dog in snow"]


def test_config_presets():
    full, cpu = SAGConfig(), SAGConfig.cpu()
    assert (full.sag_T, full.sag_r, full.guidance_scale, full.num_inference_steps) == (0.9, 0.0, 7.5, 50)
    assert cpu.guidance_scale == 4.0 and cpu.num_inference_steps < full.num_inference_steps
    assert full.pipeline_kwargs()["sag_T"] == 0.9
