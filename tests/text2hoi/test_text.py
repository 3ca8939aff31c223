"""The CLIP text encoder on a tiny CLIP built from a config and saved to a temporary folder
(transformers, offline): shapes, determinism, the 22-token truncation, unnormalised features."""

import json

import pytest
import torch

from cvpr24.text2hoi.text import CLIP_CONTEXT, ClipTextEncoder

transformers = pytest.importorskip("transformers")


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (printable bytes as themselves, the rest
    shifted past 255)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Byte-level vocabulary (every byte, alone and word-final), no merges; end-of-text has the
    largest id, as in OpenAI's vocabulary (the pooled token is found by it)."""
    d = tmp_path_factory.mktemp("tiny_clip")
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(d)
    cfg = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=24, bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
        pad_token_id=len(vocab) - 1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformers.CLIPTextModelWithProjection(cfg).save_pretrained(d)
    return d


def test_clip_features_shape_determinism_and_truncation(tiny_clip):
    enc = ClipTextEncoder(tiny_clip)
    assert enc.dim == 24
    a = enc(["lift the mug", "pour milk"])
    assert a.shape == (2, 24) and a.dtype == torch.float32
    assert torch.equal(a, ClipTextEncoder(tiny_clip)(["lift the mug", "pour milk"]))
    assert not torch.allclose(a[0], a[1])
    assert not torch.allclose(a.norm(dim=-1), torch.ones(2))  # the networks get unnormalised features
    # 22 tokens = start + 20 byte tokens + end: text past the 20th token is cut off
    long = "a" * (CLIP_CONTEXT - 2)
    same = enc([long + "xyz", long + "qrs", long[:-1] + "b"])
    torch.testing.assert_close(same[0], same[1])
    assert not torch.allclose(same[0], same[2])


def test_clip_bad_input(tiny_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="clip path"):
        ClipTextEncoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="non-empty"):
        ClipTextEncoder(tiny_clip)(["  "])
