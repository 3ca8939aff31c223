"""SAG with a DreamBooth-LoRA loaded through diffusers' ``load_lora_weights`` (issue part 2)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from cvpr24.sag.pipeline import SubjectAgnosticStableDiffusionPipeline  # noqa: E402

KW = {"num_inference_steps": 3, "output_type": "np", "guidance_scale": 7.5}
PROMPT = "a pencil sketch of sks"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def lora_dir(tiny_sd_components, tmp_path):
    """A non-zero LoRA on the tiny UNet's attention, saved in diffusers' LoRA format."""
    unet = copy.deepcopy(tiny_sd_components["unet"])
    torch.manual_seed(1)
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))
    diffusers.StableDiffusionPipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=peft.get_peft_model_state_dict(unet), safe_serialization=True)
    return tmp_path / "lora"


def make(cls, components, lora_dir=None):
    pipe = cls(**copy.deepcopy(components))
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(lora_dir)
    return pipe


def test_lora_T1_r0_equals_stable_diffusion_with_the_same_lora(tiny_sd_components, lora_dir):
    ref = make(diffusers.StableDiffusionPipeline, tiny_sd_components, lora_dir)
    sag = make(SubjectAgnosticStableDiffusionPipeline, tiny_sd_components, lora_dir)
    assert sag.get_active_adapters() == ref.get_active_adapters() != []
    a = ref(PROMPT, generator=gen(), **KW).images
    b = sag(PROMPT, placeholder_token="sks", class_word="dog", sag_T=1.0, sag_r=0.0, generator=gen(), **KW).images
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_lora_changes_the_sag_output(tiny_sd_components, lora_dir):
    kw = {"placeholder_token": "sks", "class_word": "dog", "sag_T": 0.5, "sag_r": -0.5, **KW}
    with_lora = make(SubjectAgnosticStableDiffusionPipeline, tiny_sd_components, lora_dir)
    plain = make(SubjectAgnosticStableDiffusionPipeline, tiny_sd_components)
    a = with_lora(PROMPT, generator=gen(), **kw).images
    b = plain(PROMPT, generator=gen(), **kw).images
    assert np.abs(a - b).max() > 1e-2  # the adapter is really active in SAG's UNet evaluations
    with_lora.unload_lora_weights()  # and removing it gives back the base model exactly
    np.testing.assert_allclose(with_lora(PROMPT, generator=gen(), **kw).images, b, atol=1e-5, rtol=0)
