"""ShapesWorld: the procedural data of the CPU-scale reproduction (docs/sag.md, Reproduction).

An image holds one object on a flat background. The object has a *shape* (the "class",
nameable), a fill *colour* (nameable) and a *texture* (the identity detail that no word
can request: a 4x4-pixel spot at the object's centre, in one of five colours or none). The
spot is small and moves with the object's jitter, so, like a real subject's fine detail, it
is decided late in sampling, after the background (docs/sag.md, Testbed diagnostics). Captions are three token slots ``[colour, shape, background]``; a subject
caption ``[null, S*, bg]`` puts the encoder's subject token in the noun slot, as ``S*`` is the
noun of "a photo of S*"; the class-only caption puts the shape word there.

Everything is deterministic given a seed (a ``torch.Generator`` or an int). Images are
``float32`` in ``[-1, 1]``, shape ``(N, 3, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BACKGROUNDS: tuple[str, ...] = ("white", "blue", "green", "red", "yellow")
COLOURS: tuple[str, ...] = ("grey", "orange", "purple", "cyan")
SHAPES: tuple[str, ...] = ("square", "triangle", "cross")
TEXTURES: tuple[str, ...] = ("plain", "black-spot", "white-spot", "pink-spot", "brown-spot",
                             "lime-spot")  # the unnamed identity

# RGB in [0, 1].
BACKGROUND_RGB = torch.tensor([
    [1.00, 1.00, 1.00],  # white
    [0.10, 0.20, 0.90],  # blue
    [0.10, 0.70, 0.20],  # green
    [0.90, 0.10, 0.10],  # red
    [0.95, 0.90, 0.10],  # yellow
])
COLOUR_RGB = torch.tensor([
    [0.55, 0.55, 0.55],  # grey (black would hide the black spot)
    [1.00, 0.55, 0.00],  # orange
    [0.55, 0.10, 0.75],  # purple
    [0.00, 0.85, 0.85],  # cyan
])
# The identity detail (the "texture"): a 4x4 spot at the object's centre in a colour that no word
# names; "plain" has none.
SPOT_RGB = torch.tensor([
    [0.05, 0.05, 0.05],  # black
    [1.00, 1.00, 1.00],  # white
    [1.00, 0.60, 0.80],  # pink
    [0.50, 0.30, 0.10],  # brown
    [0.60, 1.00, 0.20],  # lime
])

# Vocabulary: 0 is the null token, then colours, shapes, backgrounds.
NULL = 0
COLOUR_TOKENS = tuple(range(1, 1 + len(COLOURS)))
SHAPE_TOKENS = tuple(range(COLOUR_TOKENS[-1] + 1, COLOUR_TOKENS[-1] + 1 + len(SHAPES)))
BACKGROUND_TOKENS = tuple(range(SHAPE_TOKENS[-1] + 1, SHAPE_TOKENS[-1] + 1 + len(BACKGROUNDS)))
VOCAB_SIZE = BACKGROUND_TOKENS[-1] + 1
N_SLOTS = 3  # [colour, shape, background]
SUBJECT_SLOT = 1  # S* takes the noun's (shape's) slot


@dataclass(frozen=True)
class Subject:
    """A subject: indices into ``SHAPES``, ``COLOURS`` and ``TEXTURES``."""

    shape: int
    colour: int
    texture: int

    @property
    def name(self) -> str:
        return f"{COLOURS[self.colour]}-{TEXTURES[self.texture]}-{SHAPES[self.shape]}"


ALL_SUBJECTS: tuple[Subject, ...] = tuple(
    Subject(s, c, t) for s in range(len(SHAPES)) for c in range(len(COLOURS)) for t in range(len(TEXTURES))
)


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def render(shape: torch.Tensor, colour: torch.Tensor, texture: torch.Tensor, background: torch.Tensor,
           jitter: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Render a batch of objects.

    Parameters
    ----------
    shape, colour, texture, background : LongTensor of shape (N,)
        Indices into ``SHAPES``, ``COLOURS``, ``TEXTURES`` and ``BACKGROUNDS``.
    jitter : LongTensor of shape (N, 2)
        Integer (dy, dx) offsets of the object's centre, in ``[-2, 2]`` at 16 px.
    size : int
        Image side (16 or 32). The object scales with it.

    Returns
    -------
    Tensor of shape (N, 3, size, size) in [-1, 1].
    """
    n = shape.shape[0]
    scale = size / 16
    coords = torch.arange(size, dtype=torch.float32)
    y = coords.view(1, size, 1)
    x = coords.view(1, 1, size)
    cy = (size / 2 - 0.5) + jitter[:, 0].float().view(n, 1, 1) * scale
    cx = (size / 2 - 0.5) + jitter[:, 1].float().view(n, 1, 1) * scale
    dy, dx = (y - cy) / scale, (x - cx) / scale
    # Shapes that differ in many pixels (square 64, triangle 40, cross 48 px at 16 px), so that
    # the class is not a matter of a few corner pixels.
    square = (dy.abs() <= 4) & (dx.abs() <= 4)
    triangle = (dy.abs() <= 4) & (dx.abs() <= (dy + 4.5) / 2)
    cross = ((dy.abs() <= 4) & (dx.abs() <= 1.5)) | ((dx.abs() <= 4) & (dy.abs() <= 1.5))
    masks = torch.stack([square, triangle, cross], 1)  # (N, 3 shapes, H, W)
    inside = masks[torch.arange(n), shape]  # (N, H, W)
    centre = ((dy.abs() <= 2) & (dx.abs() <= 2)).expand(n, size, size)  # 4x4 px at 16 px, inside every shape
    has_spot = (centre & (texture > 0).view(n, 1, 1)).unsqueeze(1)  # (N, 1, H, W)
    spot = SPOT_RGB[(texture - 1).clamp(min=0)].view(n, 3, 1, 1)
    fill = torch.where(has_spot, spot, COLOUR_RGB[colour].view(n, 3, 1, 1))  # (N, 3, H, W)
    bg = BACKGROUND_RGB[background].view(n, 3, 1, 1).expand(n, 3, size, size)
    img = torch.where(inside.unsqueeze(1), fill, bg)
    return img * 2 - 1


def random_attributes(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniformly random shape, colour, texture, background and jitter for ``n`` images."""
    return {
        "shape": torch.randint(len(SHAPES), (n,), generator=generator),
        "colour": torch.randint(len(COLOURS), (n,), generator=generator),
        "texture": torch.randint(len(TEXTURES), (n,), generator=generator),
        "background": torch.randint(len(BACKGROUNDS), (n,), generator=generator),
        "jitter": torch.randint(-2, 3, (n, 2), generator=generator),
    }


def render_subjects(subjects: list[Subject], backgrounds: torch.Tensor, generator: torch.Generator,
                    size: int = 16) -> torch.Tensor:
    """Render each subject on its background at a fresh random jitter."""
    n = len(subjects)
    jitter = torch.randint(-2, 3, (n, 2), generator=generator)
    return render(torch.tensor([s.shape for s in subjects]), torch.tensor([s.colour for s in subjects]),
                  torch.tensor([s.texture for s in subjects]), backgrounds, jitter, size)


def word_tokens(colour: torch.Tensor | None, shape: torch.Tensor | None,
                background: torch.Tensor | None, n: int) -> torch.Tensor:
    """Token ids ``(n, 3)`` of the caption ``[colour, shape, background]``; ``None`` is the null word."""
    def slot(idx: torch.Tensor | None, table: tuple[int, ...]) -> torch.Tensor:
        if idx is None:
            return torch.full((n,), NULL, dtype=torch.long)
        return torch.tensor(table)[idx]
    return torch.stack([slot(colour, COLOUR_TOKENS), slot(shape, SHAPE_TOKENS),
                        slot(background, BACKGROUND_TOKENS)], 1)


def training_batch(batch_size: int, generator: torch.Generator, size: int = 16,
                   p_word: float = 0.3, p_caption: float = 0.1, p_subject: float = 0.5,
                   p_subject_bg: float = 0.5) -> dict[str, torch.Tensor]:
    """One training batch of the ELITE-like model, with the reconstruction leak.

    Half the rows (``p_subject``) are subject rows: caption ``[null, S*, bg-or-null]`` and a
    reference image of the *same* object and texture on the *same* background at a new
    jitter. The other rows are word captions ``[colour, shape, bg]``, each word dropped with
    ``p_word`` and the whole caption with ``p_caption`` (the null condition of CFG).

    Returns
    -------
    dict with ``image`` (B, 3, H, W), ``ref`` (B, 3, H, W), ``tokens`` (B, 3) and
    ``use_subject`` (B,) bool: slot ``SUBJECT_SLOT`` of those rows is replaced by the subject token.
    """
    g = generator
    a = random_attributes(batch_size, g)
    image = render(a["shape"], a["colour"], a["texture"], a["background"], a["jitter"], size)
    ref = render(a["shape"], a["colour"], a["texture"], a["background"],
                 torch.randint(-2, 3, (batch_size, 2), generator=g), size)
    tokens = word_tokens(a["colour"], a["shape"], a["background"], batch_size)
    keep = torch.rand(batch_size, N_SLOTS, generator=g) >= p_word
    keep &= (torch.rand(batch_size, 1, generator=g) >= p_caption)
    tokens = torch.where(keep, tokens, NULL)
    use_subject = torch.rand(batch_size, generator=g) < p_subject
    keep_bg = torch.rand(batch_size, generator=g) < p_subject_bg
    subject_tokens = torch.stack([torch.full((batch_size,), NULL), torch.full((batch_size,), NULL),
                                  torch.where(keep_bg, tokens.new_tensor(BACKGROUND_TOKENS)[a["background"]],
                                              NULL)], 1)
    tokens = torch.where(use_subject.unsqueeze(1), subject_tokens, tokens)
    return {"image": image, "ref": ref, "tokens": tokens, "use_subject": use_subject}


def probe_batch(batch_size: int, generator: torch.Generator, size: int = 16,
                noise_std: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean renders on random backgrounds for the probe classifier.

    Returns images ``(B, 3, H, W)`` (with a little Gaussian noise, ``noise_std``, so the probe
    tolerates sampler noise) and labels ``(B, 3)`` = (shape, colour, texture).
    """
    a = random_attributes(batch_size, generator)
    img = render(a["shape"], a["colour"], a["texture"], a["background"], a["jitter"], size)
    if noise_std > 0:
        img = img + noise_std * torch.randn(img.shape, generator=generator)
    return img, torch.stack([a["shape"], a["colour"], a["texture"]], 1)


def background_of(images: torch.Tensor) -> torch.Tensor:
    """The background probe (the CLIP-T analog): per-channel median of the 1-px border
    ring, snapped to the nearest palette colour. Returns indices into ``BACKGROUNDS``, (N,)."""
    rgb = (images.clamp(-1, 1) + 1) / 2
    ring = torch.cat([rgb[:, :, 0, :], rgb[:, :, -1, :], rgb[:, :, 1:-1, 0], rgb[:, :, 1:-1, -1]], 2)
    med = ring.median(dim=2).values  # (N, 3)
    return torch.cdist(med, BACKGROUND_RGB).argmin(1)
