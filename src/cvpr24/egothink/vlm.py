"""Answering VLMs: adapters and the resumable inference loop (E1).

An adapter has ``generate(request) -> str`` for one :class:`VLMRequest` (system message,
user text, the original image bytes, where the image goes, the token budget, temperature).
Three are provided: :class:`OpenAIChatVLM` (any OpenAI-compatible server: OpenAI, Azure,
vLLM, SGLang, Ollama), :class:`HFVLM` (local ``transformers`` weights through the generic
image-text-to-text auto classes) and :class:`CallableVLM` (a plain function). New models need
no edits here: wrap them in ``CallableVLM`` or serve them behind an OpenAI-compatible API.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cvpr24.common import atomic_write, optional_import
from cvpr24.common.progress import progress
from cvpr24.egothink.client import ChatClient
from cvpr24.egothink.config import BY_KEY, EgoThinkConfig
from cvpr24.egothink.data import (
    EgoThinkDataset,
    EgoThinkItem,
    model_answer_path,
    read_jsonl,
    write_jsonl,
    write_questions,
)
from cvpr24.egothink.prompts import PromptSet, build_vlm_prompt, postprocess_answer


@dataclass(frozen=True)
class VLMRequest:
    """One question for an answering VLM."""

    system: str
    text: str
    image: bytes  # the original encoded file bytes
    image_first: bool
    max_new_tokens: int
    temperature: float
    dim: str = ""


def _mime(image: bytes) -> str:
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return "image/jpeg"


class OpenAIChatVLM:
    """An answering VLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    The user turn holds the text part and one ``image_url`` part with
    ``data:image/jpeg;base64,<original file bytes>`` (text first unless the style puts the
    image first); ``max_tokens`` is the dimension's budget (30, or 300 for Planning).

    Parameters
    ----------
    model : str
        Model name sent to the server (e.g. ``gpt-4o`` or a vLLM-served checkpoint).
    base_url : str
        Endpoint root, e.g. ``http://127.0.0.1:8000/v1``.
    api_key_env : str
        Environment variable holding the key (not needed for loopback URLs).
    style : str
        Default prompt style of this adapter (``short`` for API models, as the official code).
    """

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1",
                 api_key_env: str = "OPENAI_API_KEY", style: str = "short",
                 config: EgoThinkConfig | None = None, api_version: str | None = None, **client_kwargs):
        cfg = (config or EgoThinkConfig()).validate()
        self.model, self.style = model, style
        self.client = ChatClient(base_url, api_key_env, max_retry=cfg.api_max_retry,
                                 backoff=cfg.api_retry_backoff, timeout=cfg.request_timeout,
                                 sleep_after_success=cfg.sleep_after_success, api_version=api_version,
                                 **client_kwargs)

    def request_body(self, req: VLMRequest) -> dict:
        url = f"data:{_mime(req.image)};base64," + base64.b64encode(req.image).decode("ascii")
        parts = [{"type": "text", "text": req.text}, {"type": "image_url", "image_url": {"url": url}}]
        if req.image_first:
            parts.reverse()
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": parts}]
        return {"model": self.model, "messages": messages, "temperature": req.temperature,
                "max_tokens": req.max_new_tokens}

    def generate(self, req: VLMRequest) -> str:
        return self.client.chat(self.request_body(req))

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.client.close()


class CallableVLM:
    """Wrap ``fn(request: VLMRequest) -> str`` as an answering VLM."""

    def __init__(self, fn: Callable[[VLMRequest], str], style: str = "persona"):
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {type(fn).__name__}")
        self.fn, self.style = fn, style

    def generate(self, req: VLMRequest) -> str:
        return self.fn(req)


class HFVLM:
    """A local ``transformers`` VLM through ``AutoModelForImageTextToText`` + ``AutoProcessor``.

    The chat is built with the processor's chat template: the system prompt (persona by
    default), then one user turn with the image and the question; decoding is greedy at
    temperature 0, sampling otherwise; only the newly generated tokens are decoded.

    Parameters
    ----------
    model_path : str or path
        A local folder with the weights and processor files (nothing is downloaded).
    style : str
        Prompt style; ``persona`` by default.
    dtype : str
        Torch dtype name for the weights (``"float32"``, ``"bfloat16"``...).
    device : str
        ``"cpu"``, ``"cuda"``, ``"auto"``...
    model, processor : optional
        Already-built objects (e.g. in tests); ``model_path`` is then ignored.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, style: str = "persona",
                 dtype: str = "float32", device: str = "cpu", model=None, processor=None):
        import torch

        from cvpr24.common import get_device

        tr = optional_import("transformers", "egothink")
        self.style = style
        self.device = get_device(device)
        if model is None or processor is None:
            if model_path is None or not Path(model_path).is_dir():
                raise FileNotFoundError(f"model_path: no such local model folder {model_path!r}")
            processor = tr.AutoProcessor.from_pretrained(model_path, local_files_only=True)
            model = tr.AutoModelForImageTextToText.from_pretrained(
                model_path, local_files_only=True, dtype=getattr(torch, dtype))
        self.model = model.to(self.device).eval()
        self.processor = processor

    def build_messages(self, req: VLMRequest) -> list[dict]:
        image_part, text_part = {"type": "image"}, {"type": "text", "text": req.text}
        content = [image_part, text_part] if req.image_first else [text_part, image_part]
        sys = [{"role": "system", "content": [{"type": "text", "text": req.system}]}] if req.system else []
        return sys + [{"role": "user", "content": content}]

    def generate(self, req: VLMRequest) -> str:
        import torch
        from PIL import Image

        image = Image.open(io.BytesIO(req.image)).convert("RGB")
        prompt = self.processor.apply_chat_template(self.build_messages(req), add_generation_prompt=True,
                                                    tokenize=False)
        inputs = self.processor(images=[image], text=prompt, return_tensors="pt").to(self.device)
        kwargs = {"max_new_tokens": req.max_new_tokens, "do_sample": req.temperature > 0}
        if req.temperature > 0:
            kwargs["temperature"] = req.temperature
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.decode(new, skip_special_tokens=True)


def downscale(image: bytes, max_side: int, quality: int = 95) -> bytes:
    """JPEG bytes of ``image`` with its longer side at most ``max_side`` (unchanged if smaller)."""
    from PIL import Image

    img = Image.open(io.BytesIO(image))
    if max(img.size) <= max_side:
        return image
    scale = max_side / max(img.size)
    img = img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                    Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_request(item: EgoThinkItem, config: EgoThinkConfig, style: str | None = None,
                 prompts: PromptSet | None = None) -> VLMRequest:
    """The request for one item under a config (prompt style, budget, temperature, image size)."""
    style = style or config.prompt_style
    planning = BY_KEY[item.dim].planning
    p = build_vlm_prompt(item.question, planning, style, prompts)
    image = item.image_bytes()
    if config.max_side is not None:
        image = downscale(image, config.max_side)
    return VLMRequest(p.system, p.text, image, p.image_first, config.budget(item.dim),
                      config.vlm_temperature, item.dim)


def run_inference(vlm, ds: EgoThinkDataset, answers_root: str | os.PathLike, model_id: str,
                  config: EgoThinkConfig | None = None, *, style: str | None = None,
                  prompts: PromptSet | None = None, resume: bool = True,
                  show_progress: bool | None = None) -> dict[str, int]:
    """Answer every item of ``ds`` with ``vlm`` into a FastChat answers folder.

    Answers are appended to ``model_answer/<model_id>.jsonl.part`` one line at a time; a
    re-run with ``resume=True`` skips answered items, and the finished file is written
    atomically, sorted by question id. Questions and references are written too.

    Parameters
    ----------
    vlm : object
        An adapter with ``generate(VLMRequest) -> str``.
    ds : EgoThinkDataset
    answers_root : path
    model_id : str
        The ``model_id`` of the answer rows and the answer file name.
    style : str, optional
        Prompt style; default ``config.prompt_style``.

    Returns
    -------
    dict
        ``{"answered": n_new, "skipped": n_resumed}``.
    """
    cfg = (config or EgoThinkConfig()).validate()
    style = style or getattr(vlm, "style", None) or cfg.prompt_style
    root = Path(answers_root)
    selected = EgoThinkDataset([it for it in ds if it.dim in cfg.dims], ds.root, ds.layout)
    if not len(selected):
        raise ValueError(f"config.dims {list(cfg.dims)} selects no item of the dataset (dims {list(ds.dims)})")
    ds = selected
    write_questions(ds, root)
    done: dict[tuple[str, int], dict] = {}
    for d in ds.dims:
        final = model_answer_path(root, d, model_id)
        part = final.with_name(final.name + ".part")
        for p in (final, part) if resume else ():
            if p.is_file():
                for r in read_jsonl(p, tolerate_truncated=(p == part)):
                    done[(d, r["question_id"])] = r
        if not resume:
            part.unlink(missing_ok=True)
    todo = [it for it in ds if (it.dim, it.question_id) not in done]
    for it in progress(todo, desc=f"infer ({model_id})",
                       disable=None if show_progress is None else not show_progress):
        req = make_request(it, cfg, style, prompts)
        text = postprocess_answer(vlm.generate(req), BY_KEY[it.dim].planning, style, cfg.last_line_rule)
        row = {"question_id": it.question_id, "answer_id": f"{model_id}-{it.uid}", "model_id": model_id,
               "choices": [{"index": 0, "turns": [text]}], "tstamp": time.time()}
        final = model_answer_path(root, it.dim, model_id)
        part = final.with_name(final.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        done[(it.dim, it.question_id)] = row
    for d in ds.dims:
        final = model_answer_path(root, d, model_id)
        write_jsonl(final, sorted((r for (dd, _), r in done.items() if dd == d), key=lambda r: r["question_id"]))
        final.with_name(final.name + ".part").unlink(missing_ok=True)
    manifest = {"model_id": model_id, "style": style, "config": {
        k: v for k, v in asdict(cfg).items() if k.startswith(("vlm", "max_new", "last_line", "prompt"))},
        "prompts": (prompts or PromptSet()).manifest(), "dims": list(ds.dims)}
    with atomic_write(root / f"infer_manifest_{model_id}.json") as f:
        json.dump(manifest, f, indent=2)
    return {"answered": len(todo), "skipped": len(ds) - len(todo)}


def make_vlm(spec: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
             config: EgoThinkConfig | None = None, **kwargs):
    """``openai:<model>`` or ``hf:<path>`` to an adapter."""
    kind, _, name = spec.partition(":")
    if kind == "openai" and name:
        return OpenAIChatVLM(name, base_url or "https://api.openai.com/v1", api_key_env, config=config, **kwargs)
    if kind == "hf" and name:
        return HFVLM(name, **kwargs)
    raise ValueError(f"model must be 'openai:<model name>' or 'hf:<local path>', got {spec!r}")


__all__ = ["CallableVLM", "HFVLM", "OpenAIChatVLM", "VLMRequest", "make_request", "make_vlm",
           "run_inference"]


