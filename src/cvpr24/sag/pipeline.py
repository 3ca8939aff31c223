"""Subject-Agnostic Guidance as diffusers pipelines.

- :class:`SubjectAgnosticStableDiffusionPipeline`: a ``StableDiffusionPipeline`` subclass
  whose ``__call__`` keeps every argument of the parent and adds ``agnostic_prompt``,
  ``agnostic_prompt_embeds``, ``placeholder_token``, ``class_word``, ``sag_T``, ``sag_r``,
  ``sag_time_mode``, ``agnostic_ip_mode`` and ``sag_batch_conditions``. Works with
  ``load_textual_inversion``, ``load_lora_weights``, fine-tuned DreamBooth folders and
  IP-Adapter (the separate-embedding case: ``c0`` = the adapter's scale 0 on that branch).
- :func:`sag_blip_diffusion`: the separate-embedding case for BLIP-Diffusion (``c0`` = the
  built prompt with ``ctx_embeddings=None``).

Not Self-Attention Guidance: diffusers' ``StableDiffusionSAGPipeline`` and its ``sag_scale``
belong to a different paper (Hong et al.). Our arguments are ``sag_T`` and ``sag_r``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from cvpr24.common import optional_import
from cvpr24.sag.guidance import (
    SAGSchedule,
    conditions_needed,
    dual_cfg,
    dual_cfg_bar,
    guidance_scale_to_w,
    make_agnostic_prompts,
    rescale_noise_cfg,
)

_diffusers = optional_import("diffusers", "sag")
from diffusers import StableDiffusionPipeline  # noqa: E402
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput  # noqa: E402
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps  # noqa: E402

AGNOSTIC_IP_MODES = ("scale0", "zero_embeds")


def ip_adapter_processors(unet: torch.nn.Module) -> list[Any]:
    """The UNet's IP-Adapter attention processors (those with a ``scale`` list and ``to_k_ip``)."""
    return [p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip") and hasattr(p, "scale")]


@contextmanager
def ip_adapter_scale_zero(unet: torch.nn.Module) -> Iterator[None]:
    """Set every IP-Adapter processor's scale to 0 for the calls inside the block.

    With scale 0 the image-prompt attention term vanishes exactly: this is the "zero the
    subject embedding *and* its attention mask" of Sec. 3.1 for IP-Adapter.
    """
    procs = ip_adapter_processors(unet)
    saved = [list(p.scale) for p in procs]
    try:
        for p in procs:
            p.scale = [0.0] * len(p.scale)
        yield
    finally:
        for p, s in zip(procs, saved, strict=True):
            p.scale = s


class SubjectAgnosticStableDiffusionPipeline(StableDiffusionPipeline):
    r"""Stable Diffusion with Subject-Agnostic Guidance (Chan et al., CVPR 2024).

    At each step the pipeline evaluates only the conditions that Eq. (3) needs: ``[phi, c0]``
    in the early phase (``t > T``), ``[phi, c]`` in the late phase when ``r = 0`` (so the
    default costs 2 UNet rows per image per step, like CFG) and ``[phi, c0, c]`` otherwise;
    then combines them with Eqs. (2) and (4).

    Build it like any Stable Diffusion pipeline (``from_pretrained(path)`` on a local folder,
    or ``SubjectAgnosticStableDiffusionPipeline(**pipe.components)``).

    Examples
    --------
    >>> pipe = SubjectAgnosticStableDiffusionPipeline.from_pretrained("path/to/sd-1.5")  # doctest: +SKIP
    >>> pipe.load_textual_inversion("learned_embeds.safetensors", token="<cat-toy>")  # doctest: +SKIP
    >>> image = pipe("a pencil sketch of <cat-toy>", placeholder_token="<cat-toy>",
    ...              class_word="toy", sag_T=0.9, sag_r=0.0).images[0]  # doctest: +SKIP
    """

    # --- inputs -----------------------------------------------------------------------------

    def _uses_ip_adapter(self, ip_adapter_image: Any, ip_adapter_image_embeds: Any) -> bool:
        return ip_adapter_image is not None or ip_adapter_image_embeds is not None

    def resolve_agnostic_prompt(self, prompt: str | list[str] | None, agnostic_prompt: str | list[str] | None,
                                placeholder_token: str | None, class_word: str | None,
                                uses_ip_adapter: bool) -> list[str] | None:
        """The text of ``c0``, one per prompt (``None`` when ``agnostic_prompt_embeds`` are given).

        Priority: ``agnostic_prompt`` as given; else the prompt with ``placeholder_token``
        replaced by ``class_word``; else, with an IP-Adapter, the prompt itself (the subject
        lives in the image tokens, removed by ``agnostic_ip_mode``).
        """
        if prompt is None:
            return None if agnostic_prompt is None else (
                [agnostic_prompt] if isinstance(agnostic_prompt, str) else list(agnostic_prompt))
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if agnostic_prompt is not None:
            agnostic = [agnostic_prompt] if isinstance(agnostic_prompt, str) else list(agnostic_prompt)
            if len(agnostic) == 1 and len(prompts) > 1:
                agnostic = agnostic * len(prompts)
            if len(agnostic) != len(prompts):
                raise ValueError(f"agnostic_prompt has {len(agnostic)} entries but prompt has {len(prompts)}; "
                                 "give one agnostic prompt per prompt")
            return agnostic
        if placeholder_token is not None or class_word is not None:
            if placeholder_token is None or class_word is None:
                raise ValueError("placeholder_token and class_word must be given together "
                                 f"(got placeholder_token={placeholder_token!r}, class_word={class_word!r})")
            return make_agnostic_prompts(prompts, placeholder_token, class_word, self.tokenizer)
        if uses_ip_adapter:
            return prompts
        raise ValueError("SAG needs the subject-agnostic condition: pass agnostic_prompt, agnostic_prompt_embeds, "
                         "or placeholder_token with class_word (or use an IP-Adapter)")

    # --- the network evaluation --------------------------------------------------------------

    def _predict_noise(self, latents: torch.Tensor, t: Any, names: tuple[str, ...],
                       embeds: dict[str, torch.Tensor], image_embeds: dict[str, list[torch.Tensor]] | None,
                       timestep_cond: torch.Tensor | None, ip_scale0: bool, batched: bool) -> dict[str, torch.Tensor]:
        """UNet predictions for the conditions ``names``: one batched call (default), or one call
        per condition (``batched=False``, lower peak memory). With an IP-Adapter in
        ``"scale0"`` mode the agnostic branch always runs in its own call at adapter scale 0."""
        groups: list[tuple[str, ...]]
        if not batched:
            groups = [(n,) for n in names]
        elif ip_scale0 and "agnostic" in names:
            groups = [n for n in [tuple(n for n in names if n != "agnostic"), ("agnostic",)] if n]
        else:
            groups = [names]
        preds: dict[str, torch.Tensor] = {}
        for group in groups:
            x = torch.cat([latents] * len(group))
            x = self.scheduler.scale_model_input(x, t) if hasattr(self.scheduler, "scale_model_input") else x
            added = None if image_embeds is None else {
                "image_embeds": [torch.cat([e[n] for n in group]) for e in image_embeds]}
            cond = None if timestep_cond is None else torch.cat([timestep_cond] * len(group))
            scale_zero = ip_scale0 and group == ("agnostic",)
            with ip_adapter_scale_zero(self.unet) if scale_zero else _nullcontext():
                out = self.unet(x, t, encoder_hidden_states=torch.cat([embeds[n] for n in group]),
                                timestep_cond=cond, cross_attention_kwargs=self.cross_attention_kwargs,
                                added_cond_kwargs=added, return_dict=False)[0]
            preds.update(zip(group, out.chunk(len(group)), strict=True))
        return preds

    # --- __call__ ------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        agnostic_prompt: str | list[str] | None = None,
        agnostic_prompt_embeds: torch.Tensor | None = None,
        placeholder_token: str | None = None,
        class_word: str | None = None,
        sag_T: float = 0.9,
        sag_r: float = 0.0,
        sag_time_mode: str = "diffusion_time",
        agnostic_ip_mode: str = "scale0",
        sag_batch_conditions: bool = True,
        **kwargs: Any,
    ) -> StableDiffusionPipelineOutput | tuple:
        r"""Generate with Subject-Agnostic Guidance.

        Every argument of ``StableDiffusionPipeline.__call__`` keeps its meaning. The SAG ones:

        Parameters
        ----------
        agnostic_prompt : str or list of str, optional
            The subject-agnostic prompt ``c0`` ("a pencil sketch of a dog"). Built from
            ``placeholder_token`` and ``class_word`` when not given.
        agnostic_prompt_embeds : Tensor, optional
            Pre-computed ``c0`` text embeddings, the same shape as ``prompt_embeds``.
        placeholder_token : str, optional
            The subject's pseudo-word (``"<cat-toy>"``, ``"S*"``, DreamBooth's ``"sks"``).
        class_word : str, optional
            What replaces it in ``c0`` ("dog", "toy", "stuffed animal").
        sag_T : float, default 0.9
            Guidance timing ``T`` of Eq. (3), in [0, 1]: ``c0`` alone guides the steps with
            ``t > T``. ``T = 1, r = 0`` is exactly the parent pipeline; ``T = 0`` is the
            agnostic prompt alone. The paper's default is uncertain (see docs/sag.md).
        sag_r : float, default 0.0
            Guidance weight ``r >= -1`` of the late phase (Eq. 3).
        sag_time_mode : {"diffusion_time", "step_fraction"}
            ``t = timestep / num_train_timesteps`` (faithful) or ``t = 1 - i / N``.
        agnostic_ip_mode : {"scale0", "zero_embeds"}
            How ``c0`` removes the IP-Adapter subject: adapter scale 0 on that branch (exact),
            or zero image embeddings (not equivalent: they pass through the projection).
        sag_batch_conditions : bool, default True
            Evaluate a step's conditions in one batched UNet call (faster) or one by one
            (less peak memory).

        Returns
        -------
        StableDiffusionPipelineOutput or tuple
            As ``StableDiffusionPipeline``.
        """
        # 0. SAG arguments (validated first: a bad T or r fails before any network call)
        schedule = SAGSchedule(T=sag_T, r=sag_r, time_mode=sag_time_mode)
        if agnostic_ip_mode not in AGNOSTIC_IP_MODES:
            raise ValueError(f"agnostic_ip_mode must be one of {AGNOSTIC_IP_MODES}, got {agnostic_ip_mode!r}")
        for name in ("callback", "callback_steps"):
            if kwargs.pop(name, None) is not None:
                raise ValueError(f"{name} is deprecated in diffusers and not supported here; use callback_on_step_end")
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        if hasattr(callback_on_step_end, "tensor_inputs"):
            tensor_inputs = callback_on_step_end.tensor_inputs
        uses_ip = self._uses_ip_adapter(ip_adapter_image, ip_adapter_image_embeds)

        # 1. Default height and width, check the inputs
        if not height or not width:
            size = self.unet.config.sample_size
            size = size if isinstance(size, int) else size[0]
            height, width = size * self.vae_scale_factor, size * self.vae_scale_factor
        self.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          ip_adapter_image, ip_adapter_image_embeds, tensor_inputs)
        agnostic_texts = None
        if agnostic_prompt_embeds is None:
            agnostic_texts = self.resolve_agnostic_prompt(prompt, agnostic_prompt, placeholder_token, class_word,
                                                          uses_ip)
            if agnostic_texts is None:
                raise ValueError("with prompt_embeds, pass agnostic_prompt or agnostic_prompt_embeds for c0")
        elif prompt_embeds is not None and agnostic_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(f"agnostic_prompt_embeds has shape {tuple(agnostic_prompt_embeds.shape)}, expected the "
                             f"shape of prompt_embeds {tuple(prompt_embeds.shape)}")
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        w = guidance_scale_to_w(guidance_scale) if self.do_classifier_free_guidance else 0.0

        # 2. Call parameters
        if prompt is not None:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        device = self._execution_device
        lora_scale = cross_attention_kwargs.get("scale", None) if cross_attention_kwargs is not None else None

        # 3. Encode c, phi and c0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, lora_scale=lora_scale,
            clip_skip=self.clip_skip)
        if agnostic_prompt_embeds is None:
            agnostic_prompt_embeds, _ = self.encode_prompt(
                agnostic_texts, device, num_images_per_prompt, False, lora_scale=lora_scale, clip_skip=self.clip_skip)
        else:
            agnostic_prompt_embeds = agnostic_prompt_embeds.to(device=device, dtype=prompt_embeds.dtype)
            agnostic_prompt_embeds = agnostic_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if agnostic_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(f"agnostic prompt embeddings have shape {tuple(agnostic_prompt_embeds.shape)}, "
                             f"but prompt embeddings have {tuple(prompt_embeds.shape)} (agnostic_prompt must match prompt)")
        embeds = {"cond": prompt_embeds, "agnostic": agnostic_prompt_embeds, "uncond": negative_prompt_embeds}

        image_embeds = None
        if uses_ip:
            per_adapter = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, batch_size * num_images_per_prompt,
                self.do_classifier_free_guidance)
            image_embeds = []
            for e in per_adapter:
                neg, pos = e.chunk(2) if self.do_classifier_free_guidance else (None, e)
                agn = torch.zeros_like(pos) if agnostic_ip_mode == "zero_embeds" else pos
                image_embeds.append({"uncond": neg, "cond": pos, "agnostic": agn})

        # 4. Timesteps
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device,
                                                            timesteps, sigmas)

        # 5. Initial latents
        latents = self.prepare_latents(batch_size * num_images_per_prompt, self.unet.config.in_channels, height,
                                       width, prompt_embeds.dtype, device, generator, latents)

        # 6. Extra step kwargs and the guidance-scale embedding of LCM-style UNets
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            gs = torch.tensor(self.guidance_scale - 1).repeat(batch_size * num_images_per_prompt)
            timestep_cond = self.get_guidance_scale_embedding(
                gs, embedding_dim=self.unet.config.time_cond_proj_dim).to(device=device, dtype=latents.dtype)

        # 7. Denoising loop with dual classifier-free guidance
        self._num_timesteps = len(timesteps)
        self.sag_nfe_ = 0
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                t_diff = schedule.time_of_step(i, len(timesteps), t, self.scheduler)
                w_t = schedule.weight(t_diff)  # Eq. (3)
                names = conditions_needed(w_t, with_uncond=self.do_classifier_free_guidance)
                preds = self._predict_noise(latents, t, names, embeds, image_embeds, timestep_cond,
                                            uses_ip and agnostic_ip_mode == "scale0", sag_batch_conditions)
                self.sag_nfe_ += len(names) * latents.shape[0]
                noise_pred = dual_cfg(preds.get("cond"), preds.get("agnostic"), preds.get("uncond"), w, w_t)
                if self.do_classifier_free_guidance and guidance_rescale > 0.0:
                    noise_bar = dual_cfg_bar(preds.get("cond"), preds.get("agnostic"), w_t)
                    noise_pred = rescale_noise_cfg(noise_pred, noise_bar, guidance_rescale)

                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                    latents = out.pop("latents", latents)
                    embeds["cond"] = prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    embeds["uncond"] = negative_prompt_embeds = out.pop("negative_prompt_embeds",
                                                                        negative_prompt_embeds)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 8. Decode
        if output_type != "latent":
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False,
                                    generator=generator)[0]
            image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
        else:
            image, has_nsfw_concept = latents, None
        do_denormalize = [True] * image.shape[0] if has_nsfw_concept is None else [not n for n in has_nsfw_concept]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image, has_nsfw_concept)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw_concept)


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield


# --- BLIP-Diffusion: the separate-embedding case ---------------------------------------------

@torch.no_grad()
def sag_blip_diffusion(
    pipe: Any,
    prompt: list[str],
    reference_image: Any,
    source_subject_category: list[str],
    target_subject_category: list[str],
    latents: torch.Tensor | None = None,
    guidance_scale: float = 7.5,
    height: int = 512,
    width: int = 512,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    neg_prompt: str = "",
    prompt_strength: float = 1.0,
    prompt_reps: int = 20,
    output_type: str = "pil",
    sag_T: float = 0.9,
    sag_r: float = 0.0,
    sag_time_mode: str = "diffusion_time",
) -> list[Any]:
    """Subject-agnostic guidance on a diffusers ``BlipDiffusionPipeline``.

    ``c`` is the built prompt ("a {tgt_subject} {prompt}" x ``prompt_reps``) encoded with the
    Q-Former query embeddings as context; ``c0`` is the same built prompt with
    ``ctx_embeddings=None``: the subject embeddings and their attention positions are removed
    (the paper's "zero the embedding and its mask"). ``phi`` is ``neg_prompt`` without context,
    as in the parent pipeline. Returns the images (``output_type`` as in diffusers).
    """
    schedule = SAGSchedule(T=sag_T, r=sag_r, time_mode=sag_time_mode)
    if len(prompt) != len(target_subject_category) or len(prompt) != len(source_subject_category):
        raise ValueError("prompt, source_subject_category and target_subject_category must have the same length "
                         f"(got {len(prompt)}, {len(source_subject_category)}, {len(target_subject_category)})")
    device = pipe._execution_device
    batch_size = len(prompt)
    reference_image = pipe.image_processor.preprocess(
        reference_image, image_mean=pipe.config.mean, image_std=pipe.config.std, return_tensors="pt"
    )["pixel_values"].to(device)
    built = pipe._build_prompt(prompts=prompt, tgt_subjects=target_subject_category,
                               prompt_strength=prompt_strength, prompt_reps=prompt_reps)
    query_embeds = pipe.get_query_embeddings(reference_image, source_subject_category)
    cond = pipe.encode_prompt(query_embeds, built, device)  # c: text + subject embeddings
    max_len = pipe.text_encoder.text_model.config.max_position_embeddings - pipe.qformer.config.num_query_tokens
    ids = pipe.tokenizer(built, padding="max_length", truncation=True, max_length=max_len,
                         return_tensors="pt").input_ids.to(device)
    agnostic = pipe.text_encoder(input_ids=ids, ctx_embeddings=None)[0]  # c0: no subject tokens at all
    w = guidance_scale_to_w(guidance_scale) if guidance_scale > 1.0 else 0.0
    embeds = {"cond": cond, "agnostic": agnostic}
    if w != 0:
        max_length = pipe.text_encoder.text_model.config.max_position_embeddings
        uncond_ids = pipe.tokenizer([neg_prompt] * batch_size, padding="max_length", max_length=max_length,
                                    return_tensors="pt").input_ids.to(device)
        embeds["uncond"] = pipe.text_encoder(input_ids=uncond_ids, ctx_embeddings=None)[0]
    scale_down = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    latents = pipe.prepare_latents(batch_size=batch_size, num_channels=pipe.unet.config.in_channels,
                                   height=height // scale_down, width=width // scale_down, generator=generator,
                                   latents=latents, dtype=pipe.unet.dtype, device=device)
    pipe.scheduler.set_timesteps(num_inference_steps)
    timesteps = pipe.scheduler.timesteps
    for i, t in enumerate(pipe.progress_bar(timesteps)):
        w_t = schedule.weight(schedule.time_of_step(i, len(timesteps), t, pipe.scheduler))
        names = conditions_needed(w_t, with_uncond=w != 0)
        # The three conditions may have different sequence lengths (c carries the query tokens).
        preds = {n: pipe.unet(latents, timestep=t, encoder_hidden_states=embeds[n])["sample"] for n in names}
        noise_pred = dual_cfg(preds.get("cond"), preds.get("agnostic"), preds.get("uncond"), w, w_t)
        latents = pipe.scheduler.step(noise_pred, t, latents)["prev_sample"]
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type)
