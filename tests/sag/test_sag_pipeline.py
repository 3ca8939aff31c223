"""The diffusers pipeline on a tiny SD built from configs (spec 6.3, 6.4, 6.6)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from cvpr24.sag.pipeline import (  # noqa: E402
    SubjectAgnosticStableDiffusionPipeline,
    ip_adapter_scale_zero,
    sag_blip_diffusion,
)

STEPS = 4
KW = {"num_inference_steps": STEPS, "output_type": "np", "guidance_scale": 7.5}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pipes(tiny_sd_components):
    ref = diffusers.StableDiffusionPipeline(**tiny_sd_components)
    sag = SubjectAgnosticStableDiffusionPipeline(**tiny_sd_components)
    for p in (ref, sag):
        p.set_progress_bar_config(disable=True)
    return ref, sag


def count_rows(unet) -> list[dict]:
    """A forward pre-hook recording each UNet call's rows and conditions."""
    calls: list[dict] = []

    def hook(module, args, kwargs):
        calls.append({"rows": args[0].shape[0], "ehs": kwargs["encoder_hidden_states"].clone()})
    unet.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


# --- equivalence with StableDiffusionPipeline (spec 6.4) ------------------------------------------

def test_T1_r0_equals_stable_diffusion(pipes):
    ref, sag = pipes
    a = ref("a pencil sketch of sks", generator=gen(), **KW).images
    b = sag("a pencil sketch of sks", placeholder_token="sks", class_word="dog", sag_T=1.0, sag_r=0.0,
            generator=gen(), **KW).images
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_T0_equals_the_agnostic_prompt_alone(pipes):
    ref, sag = pipes
    a = ref("a pencil sketch of a dog", generator=gen(), **KW).images
    b = sag("a pencil sketch of sks", placeholder_token="sks", class_word="dog", sag_T=0.0, generator=gen(), **KW).images
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    c = ref("a pencil sketch of sks", generator=gen(), **KW).images
    assert np.abs(c - a).max() > 1e-3  # the two prompts really differ, so the test can fail


def test_intermediate_T_differs_from_both_ends(pipes):
    _, sag = pipes
    args = ("a pencil sketch of sks",)
    kw = {"placeholder_token": "sks", "class_word": "dog", **KW}
    mid = sag(*args, sag_T=0.5, generator=gen(), **kw).images
    for t in (0.0, 1.0):
        assert np.abs(sag(*args, sag_T=t, generator=gen(), **kw).images - mid).max() > 1e-4


def test_batched_and_sequential_conditions_agree(pipes):
    _, sag = pipes
    kw = {"placeholder_token": "sks", "class_word": "dog", "sag_T": 0.5, "sag_r": -0.5, **KW}
    a = sag("a photo of sks", generator=gen(), sag_batch_conditions=True, **kw).images
    b = sag("a photo of sks", generator=gen(), sag_batch_conditions=False, **kw).images
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_guidance_rescale_and_callbacks_keep_working(pipes):
    ref, sag = pipes
    seen = []

    def cb(pipe, i, t, kwargs):
        seen.append(i)
        return kwargs
    a = ref("a photo of sks", generator=gen(), guidance_rescale=0.7, **KW).images
    b = sag("a photo of sks", agnostic_prompt="a photo of a dog", sag_T=1.0, generator=gen(), guidance_rescale=0.7,
            callback_on_step_end=cb, **KW).images
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    assert seen == list(range(STEPS))


def test_prompt_lists_and_images_per_prompt(pipes):
    ref, sag = pipes
    prompts = ["a photo of sks", "sks in the jungle"]
    kw = {**KW, "num_images_per_prompt": 2}
    a = ref(["a photo of a dog", "a dog in the jungle"], generator=gen(), **kw).images
    b = sag(prompts, placeholder_token="sks", class_word="dog", sag_T=0.0, generator=gen(), **kw).images
    assert b.shape[0] == 4
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_prompt_embeds_path(pipes):
    ref, sag = pipes
    c, _ = sag.encode_prompt("a photo of sks", "cpu", 1, False)
    c0, _ = sag.encode_prompt("a photo of a dog", "cpu", 1, False)
    a = ref(prompt_embeds=c0, generator=gen(), **KW).images
    b = sag(prompt_embeds=c, agnostic_prompt_embeds=c0, sag_T=0.0, generator=gen(), **KW).images
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


# --- NFE accounting (spec 6.3) ---------------------------------------------------------------------

def test_nfe_r0_is_that_of_cfg(pipes):
    _, sag = pipes
    calls = count_rows(sag.unet)
    sag("a photo of sks", placeholder_token="sks", class_word="dog", sag_T=0.6, sag_r=0.0, generator=gen(), **KW)
    assert sum(c["rows"] for c in calls) == 2 * STEPS
    assert sag.sag_nfe_ == 2 * STEPS


def test_nfe_r_nonzero_adds_one_row_per_late_step(pipes):
    _, sag = pipes
    calls = count_rows(sag.unet)
    sag("a photo of sks", placeholder_token="sks", class_word="dog", sag_T=0.6, sag_r=0.5, generator=gen(), **KW)
    ts = sag.scheduler.timesteps  # DDIM, 4 steps: 751, 501, 251, 1
    late = sum(float(t) / sag.scheduler.config.num_train_timesteps <= 0.6 for t in ts)
    assert late == 3
    assert sum(c["rows"] for c in calls) == 2 * STEPS + late


def test_subject_condition_never_evaluated_in_the_early_phase(pipes):
    _, sag = pipes
    c, _ = sag.encode_prompt("a photo of sks", "cpu", 1, False)
    c0, _ = sag.encode_prompt("a photo of a dog", "cpu", 1, False)
    calls = count_rows(sag.unet)
    sag("a photo of sks", placeholder_token="sks", class_word="dog", sag_T=0.3, sag_r=0.5, generator=gen(), **KW)
    # timesteps 751, 501 are early (t > 0.3): only [phi, c0]; 251, 1 are late: [phi, c0, c].
    for call in calls[:2]:
        assert not any(torch.allclose(row, c[0]) for row in call["ehs"])
        assert any(torch.allclose(row, c0[0]) for row in call["ehs"])
    for call in calls[2:]:
        assert any(torch.allclose(row, c[0]) for row in call["ehs"])


# --- bad inputs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": "a photo of a dog", "placeholder_token": "sks", "class_word": "dog"}, "placeholder_token"),
    ({"prompt": "a photo of sks", "placeholder_token": "sks", "class_word": "dog", "sag_T": 1.2}, "sag_T"),
    ({"prompt": "a photo of sks", "placeholder_token": "sks", "class_word": "dog", "sag_T": -0.1}, "sag_T"),
    ({"prompt": "a photo of sks", "placeholder_token": "sks", "class_word": "dog", "sag_r": -2.0}, "sag_r"),
    ({"prompt": ["a photo of sks", "sks"], "agnostic_prompt": ["a", "b", "c"]}, "agnostic_prompt"),
    ({"prompt": "a photo of sks"}, "agnostic_prompt"),
    ({"prompt": "a photo of sks", "placeholder_token": "sks"}, "class_word"),
    ({"prompt": "a photo of sks", "agnostic_prompt": "a dog", "agnostic_ip_mode": "mask"}, "agnostic_ip_mode"),
    ({"prompt": "a photo of sks", "agnostic_prompt": "a dog", "sag_time_mode": "karras"}, "time_mode"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(pipes, kwargs, match):
    _, sag = pipes
    calls = count_rows(sag.unet)
    with pytest.raises(ValueError, match=match):
        sag(**kwargs, **KW)
    assert calls == []  # fails before any network evaluation


def test_agnostic_prompt_embeds_shape_mismatch(pipes):
    _, sag = pipes
    c, _ = sag.encode_prompt("a photo of sks", "cpu", 1, False)
    with pytest.raises(ValueError, match="agnostic_prompt_embeds"):
        sag(prompt_embeds=c, agnostic_prompt_embeds=c[:, :10], **KW)


# --- textual inversion (multi-vector) ----------------------------------------------------------------

def test_textual_inversion_multi_vector(pipes, tmp_path):
    from safetensors.torch import save_file
    ref, sag = pipes
    path = tmp_path / "learned_embeds.safetensors"
    save_file({"<cat-toy>": torch.randn(3, 32, generator=gen(3))}, str(path))
    sag.load_textual_inversion(str(path), token="<cat-toy>")  # shared tokenizer/text encoder with ref
    assert sag.maybe_convert_prompt("a <cat-toy>", sag.tokenizer) == "a <cat-toy> <cat-toy>_1 <cat-toy>_2"
    a = ref("a toy on the beach", generator=gen(), **KW).images
    b = sag("a <cat-toy> on the beach", placeholder_token="<cat-toy>", class_word="toy", sag_T=0.0,
            generator=gen(), **KW).images
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    c = ref("a <cat-toy> on the beach", generator=gen(), **KW).images
    d = sag("a <cat-toy> on the beach", placeholder_token="<cat-toy>", class_word="toy", sag_T=1.0,
            generator=gen(), **KW).images
    np.testing.assert_allclose(d, c, atol=1e-5, rtol=0)
    # An already expanded prompt gives the same agnostic prompt.
    assert sag.resolve_agnostic_prompt("a <cat-toy> <cat-toy>_1 <cat-toy>_2 on the beach", None, "<cat-toy>",
                                       "toy", False) == ["a toy on the beach"]


# --- IP-Adapter, the separate-embedding case (spec 6.6) ----------------------------------------------

def add_random_ip_adapter(unet, image_embed_dim: int = 16, tokens: int = 4) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    torch.manual_seed(1)
    procs = {}
    for name, _proc in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            block = name.split(".")[0]
            if block == "mid_block":
                hidden = unet.config.block_out_channels[-1]
            elif block == "up_blocks":
                hidden = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
            else:
                hidden = unet.config.block_out_channels[int(name.split(".")[1])]
            p = IPAdapterAttnProcessor2_0(hidden, unet.config.cross_attention_dim, num_tokens=(tokens,), scale=1.0)
            for lin in [*p.to_k_ip, *p.to_v_ip]:
                torch.nn.init.normal_(lin.weight, std=0.5)
            procs[name] = p
        else:
            procs[name] = AttnProcessor2_0()
    unet.set_attn_processor(procs)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([ImageProjection(
        image_embed_dim=image_embed_dim, cross_attention_dim=unet.config.cross_attention_dim,
        num_image_text_embeds=tokens)])
    unet.config.encoder_hid_dim_type = "ip_image_proj"


def test_ip_adapter_scale0_equals_text_only_unet(tiny_sd_components):
    unet = tiny_sd_components["unet"]
    g = gen(5)
    x, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    image = [torch.randn(2, 1, 16, generator=g)]
    with torch.no_grad():
        text_only = unet(x, 500, encoder_hidden_states=text).sample
        add_random_ip_adapter(unet)
        with_ip = unet(x, 500, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": image}).sample
        with ip_adapter_scale_zero(unet):
            scale0 = unet(x, 500, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": image}).sample
        zero_embeds = unet(x, 500, encoder_hidden_states=text,
                           added_cond_kwargs={"image_embeds": [torch.zeros_like(image[0])]}).sample
    torch.testing.assert_close(scale0, text_only, atol=1e-6, rtol=0)
    assert (with_ip - text_only).abs().max() > 1e-3  # the adapter really acts
    assert (zero_embeds - text_only).abs().max() > 1e-4  # zero embeddings are *not* removal
    assert all(p.scale == [1.0] for p in unet.attn_processors.values() if hasattr(p, "to_k_ip"))  # restored


def test_ip_adapter_pipeline_modes(pipes):
    ref, sag = pipes
    add_random_ip_adapter(sag.unet)
    embeds = [torch.randn(2, 1, 16, generator=gen(7))]  # (negative, positive) as diffusers expects under CFG
    kw = {"ip_adapter_image_embeds": embeds, **KW}
    a = ref("a photo of a dog", generator=gen(), **kw).images
    b = sag("a photo of a dog", sag_T=1.0, generator=gen(), **kw).images  # no placeholder: c0 text = c text
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    calls = count_rows(sag.unet)
    s0 = sag("a photo of a dog", sag_T=0.5, agnostic_ip_mode="scale0", generator=gen(), **kw).images
    assert sum(c["rows"] for c in calls) == 2 * STEPS
    ze = sag("a photo of a dog", sag_T=0.5, agnostic_ip_mode="zero_embeds", generator=gen(), **kw).images
    assert np.abs(s0 - ze).max() > 1e-4  # the two removal modes are not the same
    assert np.abs(s0 - a).max() > 1e-4


# --- BLIP-Diffusion (spec 6.6: the mock checks the calls) ---------------------------------------------

class _MockBlip:
    """Just enough of BlipDiffusionPipeline to check how c, c0 and phi are built."""

    def __init__(self):
        self.calls = []
        self._execution_device = "cpu"
        self.config = types.SimpleNamespace(mean=None, std=None, ctx_begin_pos=2)
        self.qformer = types.SimpleNamespace(config=types.SimpleNamespace(num_query_tokens=4))
        self.text_encoder = self._encode
        self.text_encoder.__func__.text_model = types.SimpleNamespace(
            config=types.SimpleNamespace(max_position_embeddings=16))
        self.image_processor = types.SimpleNamespace(preprocess=lambda img, **k: {"pixel_values": torch.zeros(1, 3)},
                                                     postprocess=lambda img, output_type: img)
        self.scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000)
        self.unet = self._unet
        self._unet.__func__.config = types.SimpleNamespace(block_out_channels=(4, 4), in_channels=4)
        self._unet.__func__.dtype = torch.float32
        self.vae = types.SimpleNamespace(config=types.SimpleNamespace(scaling_factor=1.0),
                                         decode=lambda z, return_dict=False: (z,))

    def _encode(self, input_ids, ctx_embeddings=None, ctx_begin_pos=None):
        self.calls.append({"len": input_ids.shape[1], "ctx": ctx_embeddings})
        n = input_ids.shape[1] + (0 if ctx_embeddings is None else ctx_embeddings.shape[1])
        return (torch.full((input_ids.shape[0], n, 8), float(n)),)

    def _unet(self, latents, timestep, encoder_hidden_states):
        return {"sample": latents * 0 + encoder_hidden_states.mean()}

    def tokenizer(self, texts, padding=None, truncation=None, max_length=8, return_tensors=None):
        return types.SimpleNamespace(input_ids=torch.zeros(len(texts), max_length, dtype=torch.long))

    def _build_prompt(self, prompts, tgt_subjects, prompt_strength=1.0, prompt_reps=20):
        return [", ".join([f"a {s} {p}"] * int(prompt_strength * prompt_reps)) for p, s in zip(prompts, tgt_subjects, strict=False)]

    def get_query_embeddings(self, image, src):
        return torch.ones(1, 4, 8)

    def encode_prompt(self, query_embeds, prompt, device=None):
        ids = self.tokenizer(prompt, max_length=12).input_ids
        return self.text_encoder(input_ids=ids, ctx_embeddings=query_embeds, ctx_begin_pos=[2])[0]

    def prepare_latents(self, batch_size, num_channels, height, width, generator, latents, dtype, device):
        return torch.randn(batch_size, num_channels, height, width, generator=generator)

    def progress_bar(self, it):
        return it


def test_blip_diffusion_agnostic_condition_drops_the_query_embeddings():
    pipe = _MockBlip()
    sag_blip_diffusion(pipe, ["in the jungle"], object(), ["dog"], ["dog"], num_inference_steps=3, height=8,
                       width=8, generator=gen(), sag_T=0.5, output_type="pt")
    ctx = [c["ctx"] is not None for c in pipe.calls]
    assert ctx == [True, False, False]  # c with the query tokens; c0 and phi without
    assert pipe.calls[1]["len"] == 12  # c0: the same built prompt (same token budget as c's text part)
    with pytest.raises(ValueError, match="same length"):
        sag_blip_diffusion(pipe, ["a", "b"], object(), ["dog"], ["dog"])


# --- the modular guider ------------------------------------------------------------------------------

def test_modular_guider_matches_dual_cfg():
    guiders = pytest.importorskip("diffusers.guiders")
    assert guiders is not None
    from cvpr24.sag.guidance import dual_cfg
    from cvpr24.sag.guider import SubjectAgnosticGuidance

    g = SubjectAgnosticGuidance(guidance_scale=4.0, sag_T=0.5, sag_r=0.5)
    c, u, a = (torch.randn(2, 4, generator=gen(i)) for i in range(3))
    g.set_state(step=0, num_inference_steps=10, timestep=torch.tensor(900))
    assert g.num_conditions == 2
    batches = g.prepare_inputs({"x": (c, u, a)})
    assert batches[0].x is u and batches[1].x is a  # [phi, c0]: c is not evaluated early
    torch.testing.assert_close(g.forward(pred_uncond=u, pred_agnostic=a).pred, dual_cfg(None, a, u, 3.0, -1.0))
    g.set_state(step=9, num_inference_steps=10, timestep=torch.tensor(100))
    assert g.num_conditions == 3
    torch.testing.assert_close(g.forward(pred_cond=c, pred_uncond=u, pred_agnostic=a).pred,
                               dual_cfg(c, a, u, 3.0, 0.5))
    g0 = SubjectAgnosticGuidance(sag_T=0.5, sag_r=0.0)
    g0.set_state(step=9, num_inference_steps=10, timestep=torch.tensor(100))
    late = g0.prepare_inputs({"x": (c, u, a)})
    assert g0.num_conditions == 2 and late[0].x is u and late[1].x is c  # r = 0: [phi, c], like CFG
    with pytest.raises(ValueError, match="sag_T"):
        SubjectAgnosticGuidance(sag_T=2.0)
