"""Helpers of the sag tests: a CLIP tokenizer written to a folder (no hub)."""

from __future__ import annotations

import json
import string


def write_clip_tokenizer(folder) -> None:
    """A CLIP BPE vocabulary over lowercase letters, digits and a few symbols, with merges
    for the whole words the tests use."""
    chars = list(string.ascii_lowercase + string.digits + "*<>-_.,!'")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    words = ["a", "photo", "of", "dog", "cat", "pencil", "sketch", "in", "the", "jungle", "sks", "toy", "style",
             "van", "gogh", "beach", "on", "painting", "red", "blue"]
    merges = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merges.append(f"{a} {b}")
            merged = a + b
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
