"""The separate-embedding case on a real BlipDiffusionPipeline and the guider inside a real
modular pipeline, both tiny and built from configs (no hub). At T = 1, r = 0 each must give
what its plain counterpart gives."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from sag_sd_helpers import write_clip_tokenizer

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_unet(**extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32, **extra).eval()


# --- BLIP-Diffusion ----------------------------------------------------------------------------------

@pytest.fixture
def blip_pipe(tmp_path):
    """A BlipDiffusionPipeline of tiny components: context-CLIP text encoder, UNet, VAE, PNDM."""
    if not hasattr(diffusers, "BlipDiffusionPipeline"):
        pytest.skip("this diffusers has no BlipDiffusionPipeline")
    package = diffusers.BlipDiffusionPipeline.__module__.rsplit(".", 1)[0]
    ctx_clip = importlib.import_module(package + ".modeling_ctx_clip")
    blip2 = importlib.import_module(package + ".modeling_blip2")
    image_processing = importlib.import_module(package + ".blip_image_processing")
    write_clip_tokenizer(tmp_path / "clip")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ndog\na\n")
    torch.manual_seed(0)
    text_encoder = ctx_clip.ContextCLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77))
    qformer = blip2.Blip2QFormerModel(transformers.Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "image_size": 16, "patch_size": 8},
        qformer_config={"vocab_size": 10, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                        "intermediate_size": 37, "encoder_hidden_size": 32, "max_position_embeddings": 32},
        num_query_tokens=4, tokenizer=str(tmp_path / "bert")))
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=32, sample_size=16)
    pipe = diffusers.BlipDiffusionPipeline(
        tokenizer=transformers.CLIPTokenizer(str(tmp_path / "clip" / "vocab.json"), str(tmp_path / "clip" / "merges.txt")),
        text_encoder=text_encoder.eval(), vae=vae.eval(), unet=tiny_unet(), qformer=qformer.eval(),
        scheduler=diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          skip_prk_steps=True, set_alpha_to_one=False),
        image_processor=image_processing.BlipImageProcessor(size={"height": 16, "width": 16}, do_center_crop=False),
        ctx_begin_pos=2, mean=[0.48, 0.46, 0.41], std=[0.27, 0.26, 0.28])
    pipe.set_progress_bar_config(disable=True)
    # diffusers 0.42's BLIP-2 Q-Former calls PreTrainedModel helpers that transformers 5 removed
    # (invert_attention_mask, get_head_mask, the attention outputs' layout), so it cannot run here.
    # Its output, the subject's query embeddings, is an input to what SAG changes: stand in for it.
    query = torch.randn(1, 4, 32, generator=gen(1))
    pipe.get_query_embeddings = lambda image, source_subject: query
    return pipe


def test_blip_diffusion_at_t1_equals_the_plain_pipeline(blip_pipe):
    from PIL import Image

    from cvpr24.sag.pipeline import sag_blip_diffusion

    reference = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype("uint8"))
    kw = {"guidance_scale": 7.5, "height": 16, "width": 16, "num_inference_steps": 3, "output_type": "np",
          "prompt_reps": 2}
    plain = blip_pipe("in the jungle", reference, "dog", "dog", generator=gen(), **kw).images
    sag = sag_blip_diffusion(blip_pipe, ["in the jungle"], reference, ["dog"], ["dog"], generator=gen(), sag_T=1.0,
                             sag_r=0.0, **kw)
    np.testing.assert_allclose(np.asarray(sag), plain, atol=1e-5, rtol=0)
    class_only = sag_blip_diffusion(blip_pipe, ["in the jungle"], reference, ["dog"], ["dog"], generator=gen(),
                                    sag_T=0.0, **kw)
    assert np.abs(np.asarray(class_only) - plain).max() > 1e-3  # c0 really drops the subject's tokens


# --- the modular guider in a Stable Diffusion XL modular pipeline --------------------------------

def _sdxl_denoise(guider) -> torch.Tensor:
    """Latents from diffusers' SDXL core denoise blocks (input, before-denoise, denoise loop)
    with ``guider``, on a tiny SDXL-style UNet and fixed embeddings."""
    blocks = importlib.import_module("diffusers.modular_pipelines.stable_diffusion_xl.modular_blocks_stable_diffusion_xl")
    pipe = blocks.StableDiffusionXLCoreDenoiseStep().init_pipeline()
    pipe.update_components(
        unet=tiny_unet(addition_embed_type="text_time", addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=32 + 6 * 8),
        scheduler=diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                   steps_offset=1),
        guider=guider)
    pipe.set_progress_bar_config(disable=True)
    g = gen()
    embeds = {"prompt_embeds": torch.randn(1, 7, 32, generator=g), "negative_prompt_embeds": torch.randn(1, 7, 32, generator=g),
              "pooled_prompt_embeds": torch.randn(1, 32, generator=g),
              "negative_pooled_prompt_embeds": torch.randn(1, 32, generator=g)}
    return pipe(**embeds, latents=torch.randn(1, 4, 8, 8, generator=g), num_inference_steps=3, height=64, width=64,
                output="latents")


def test_modular_guider_at_t1_equals_cfg_in_an_sdxl_modular_pipeline():
    pytest.importorskip("diffusers.modular_pipelines.stable_diffusion_xl")
    from diffusers.guiders import ClassifierFreeGuidance

    from cvpr24.sag.guider import SubjectAgnosticGuidance

    cfg = _sdxl_denoise(ClassifierFreeGuidance(guidance_scale=7.5))
    sag = _sdxl_denoise(SubjectAgnosticGuidance(guidance_scale=7.5, sag_T=1.0, sag_r=0.0))
    # Euler latents are ~15x the unit scale; the two guiders round (1+w)c - wu differently.
    torch.testing.assert_close(sag, cfg, rtol=1e-5, atol=1e-4)
    # The SDXL blocks pass (cond, uncond) pairs only: an early step that needs c0 says so.
    with pytest.raises(ValueError, match=r"\(cond, uncond, agnostic\)"):
        _sdxl_denoise(SubjectAgnosticGuidance(guidance_scale=7.5, sag_T=0.5))
