"""Fixtures: a tiny Stable Diffusion built from configs (no hub access)."""

from __future__ import annotations

import copy

import pytest
import torch
from sag_sd_helpers import write_clip_tokenizer


@pytest.fixture(scope="session")
def _tiny_sd_base(tmp_path_factory):
    """Build the tiny SD once per session (construction dominates the cost of these tests)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture
def tiny_sd_components(_tiny_sd_base):
    """A fresh deep copy of the tiny SD's components for each test (tests may modify them)."""
    return copy.deepcopy(_tiny_sd_base)


def build_tiny_sd(tmp_path):
    """Components of a tiny SD 1.x pipeline (16x16 latents, 32-d text), seeded."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=32, sample_size=16)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77, projection_dim=32))
    tok_dir = tmp_path / "tokenizer"
    write_clip_tokenizer(tok_dir)
    tokenizer = transformers.CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
            "scheduler": scheduler, "safety_checker": None, "feature_extractor": None,
            "requires_safety_checker": False, "image_encoder": None}
