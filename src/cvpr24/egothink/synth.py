"""EgoSynth-12: a procedurally generated egocentric mini-benchmark (docs/egothink.md, Reproduction).

Every item is an image rendered from the wearer's viewpoint (**the image's left is the
wearer's left**), a templated question of one of the 12 EgoThink dimensions, a short
reference answer in the official style ("On my right.", "Three.", "cutting an apple") and the
answer *slots* (the discrete facts a model must get right). Answers are drawn uniformly per
template, so the question text cannot leak the answer (tested: the majority answer of each
template is <= 1/k + 0.1).

The verbalizer turns predicted slots into free text through a family of paraphrase templates
(short form, full sentence, hedged, third person, synonyms, extra planning steps, refusals):
the *dev* family here, or the reproduction's *held-out* family, which LocalJudge never sees;
the oracle label has the judge prompt's 0/0.5/1 semantics.

``generate_synthetic`` writes the official GitHub layout (plus ``egosynth.json`` with the
slots, kept out of the annotations) so the reproduction runs through the real loader.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvpr24.common import atomic_write, optional_import
from cvpr24.egothink.config import BY_KEY, DIM_KEYS

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
RGB = {"red": (215, 35, 35), "green": (35, 165, 55), "blue": (35, 75, 215), "yellow": (235, 215, 35),
       "purple": (135, 55, 180), "orange": (240, 135, 25), "white": (245, 245, 245), "black": (20, 20, 20)}
CATEGORIES = ("cup", "bottle", "ball", "box", "knife", "plate", "phone", "book")
USES = ("Drink from it.", "Pour water from it.", "Throw it.", "Store things in it.",
        "Cut bread with it.", "Serve a meal on it.", "Call someone.", "Read it.")
ROOMS = ("kitchen", "living room", "office", "garden", "street", "bathroom")
VERBS = ("cutting", "pouring", "texting", "reading", "washing", "writing")
OBJECTS = ("an apple", "water into a cup", "on my phone", "a book", "a plate", "on paper")
NUMBERS = ("Zero", "One", "Two", "Three", "Four", "Five")
SIDES = ("left", "right")
TURNS = ("left", "right", "end")
DEPTHS = ("a few steps", "a long way")
MATERIALS = ("transparent", "opaque")
SITUATIONS = {  # question, and whether "yes" means the cue is present
    "traffic": ("Can I cross the street now?", True),  # cue: green light
    "stove": ("Is it safe to touch the pot now?", False),  # cue: glowing burner
    "rain": ("Do I need an umbrella if I go out now?", True),  # cue: rain streaks
    "dark": ("Should I turn on the light?", True),  # cue: dark room
}
CONTAINERS = ("basket", "bag")

#: Slot heads of the tiny VLMs: name -> number of values.
HEADS: dict[str, int] = {"category": 8, "color": 8, "yesno": 2, "material": 2, "use": 8, "verb": 6,
                         "obj": 6, "room": 6, "side": 2, "side2": 2, "count": 6, "choice": 2,
                         "turn": 3, "depth": 2}
#: Heads that encode left/right (relabelled for the allocentric variant).
MIRRORED_HEADS = ("side", "side2", "turn")

#: Question templates of each dimension (the qtype keys of ``_make_item``).
QTYPES: dict[str, tuple[str, ...]] = {
    "existence": ("held", "there"), "attribute": ("color", "material"), "affordance": ("use",),
    "activity": ("doing",), "location": ("where",), "spatial": ("side_of", "hand"),
    "counting": ("how_many",), "comparing": ("closer",), "situated": tuple(SITUATIONS),
    "forecasting": ("next",), "navigation": ("route",), "assistance": ("plan",),
}


@dataclass
class SynthItem:
    """One generated item: what the benchmark shows and the hidden slots."""

    dim: str
    qtype: str
    question: str
    answer: str
    slots: dict[str, int]
    fields: dict[str, str]  # question-derived strings (the object named, ...)
    image: bytes = field(repr=False, default=b"")
    objects: list[dict] = field(default_factory=list, repr=False)  # drawn objects (for tests)


# ----------------------------------------------------------------------------- rendering

class Canvas:
    """An RGB image with drawing in normalised coordinates (x right, y down, both in [0, 1])."""

    def __init__(self, size: int):
        self.pil = optional_import("PIL.Image", "egothink")
        self.draw_mod = optional_import("PIL.ImageDraw", "egothink")
        self.S = size
        self.dx = 0.0  # horizontal offset of what is drawn (scene jitter)
        self.img = self.pil.new("RGB", (size, size))
        self.d = self.draw_mod.Draw(self.img)

    def box(self, x0, y0, x1, y1):
        s, dx = self.S, self.dx
        return [round((x0 + dx) * s), round(y0 * s), round((x1 + dx) * s) - 1, round(y1 * s) - 1]

    def rect(self, x0, y0, x1, y1, fill, outline=None):
        b = self.box(x0, y0, x1, y1)
        b[2], b[3] = max(b[2], b[0]), max(b[3], b[1])
        self.d.rectangle(b, fill=fill, outline=outline)

    def ellipse(self, x0, y0, x1, y1, fill, outline=None):
        b = self.box(x0, y0, x1, y1)
        b[2], b[3] = max(b[2], b[0]), max(b[3], b[1])
        self.d.ellipse(b, fill=fill, outline=outline)

    def poly(self, pts, fill):
        self.d.polygon([((x + self.dx) * self.S, y * self.S) for x, y in pts], fill=fill)

    def line(self, pts, fill, width=1):
        self.d.line([((x + self.dx) * self.S, y * self.S) for x, y in pts], fill=fill, width=width)

    def blend(self, draw_fn, alpha: float):
        """Draw with ``draw_fn(canvas)`` on a copy and blend it in with opacity ``alpha``."""
        layer = Canvas.__new__(Canvas)
        layer.__dict__.update(self.__dict__)
        layer.img = self.img.copy()
        layer.d = self.draw_mod.Draw(layer.img)
        draw_fn(layer)
        self.img = self.pil.blend(self.img, layer.img, alpha)
        self.d = self.draw_mod.Draw(self.img)

    def jpeg(self, quality: int = 95) -> bytes:
        buf = io.BytesIO()
        self.img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


class NullCanvas(Canvas):
    """A canvas that draws nothing: samples questions and answers only (``image_size=0``)."""

    def __init__(self, size: int = 0):
        self.S, self.dx = 0, 0.0
        self.img = None

    def rect(self, *a, **k):
        pass

    ellipse = poly = line = rect

    def blend(self, draw_fn, alpha: float):
        pass

    def jpeg(self, quality: int = 95) -> bytes:
        return b""


def draw_room(c: Canvas, room: str, rng: np.random.Generator) -> None:
    """Wall/sky above the horizon (y = 0.45), floor below: the room's signature textures."""
    h = 0.45
    if room in ("garden", "street"):
        c.rect(0, 0, 1, h, (135, 195, 240))
    else:
        c.rect(0, 0, 1, h, {"kitchen": (225, 205, 165), "living room": (170, 205, 160),
                            "office": (175, 185, 215), "bathroom": (230, 235, 235)}[room])
    if room == "kitchen":  # checker tiles
        n = 8
        for i in range(n):
            for j in range(4):
                col = (240, 240, 240) if (i + j) % 2 else (40, 40, 40)
                c.rect(i / n, h + j * (1 - h) / 4, (i + 1) / n, h + (j + 1) * (1 - h) / 4, col)
    elif room == "living room":  # wood stripes
        for j in range(6):
            c.rect(0, h + j * (1 - h) / 6, 1, h + (j + 1) * (1 - h) / 6, (150, 95, 50) if j % 2 else (120, 75, 40))
    elif room == "office":  # grey carpet
        c.rect(0, h, 1, 1, (120, 120, 125))
        for _ in range(40):
            x, y = rng.uniform(0, 1), rng.uniform(h, 1)
            c.rect(x, y, x + 0.02, y + 0.02, (100, 100, 108))
    elif room == "garden":
        c.rect(0, h, 1, 1, (60, 150, 50))
    elif room == "street":  # asphalt with a dashed line
        c.rect(0, h, 1, 1, (70, 70, 75))
        for k in range(4):
            c.rect(0.47, h + 0.05 + k * 0.14, 0.53, h + 0.11 + k * 0.14, (230, 200, 40))
    else:  # bathroom: small white tiles
        c.rect(0, h, 1, 1, (150, 150, 155))
        n = 10
        for i in range(n):
            for j in range(5):
                c.rect(i / n + 0.01, h + j * (1 - h) / 5 + 0.01, (i + 1) / n - 0.01,
                       h + (j + 1) * (1 - h) / 5 - 0.01, (245, 245, 248))


SKIN = (225, 172, 115)


def draw_hands(c: Canvas, left: bool = True, right: bool = True) -> None:
    """The wearer's hands at the bottom: the left hand on the image's left."""
    if left:
        c.ellipse(0.1, 0.86, 0.34, 1.02, SKIN, outline=(160, 110, 70))
    if right:
        c.ellipse(0.66, 0.86, 0.9, 1.02, SKIN, outline=(160, 110, 70))


def draw_object(c: Canvas, cat: str, color: str, cx: float, cy: float, s: float,
                transparent: bool = False) -> None:
    """One object of a category, centred at (cx, cy) with size ``s`` (fraction of the image)."""
    col = RGB[color]
    dark = tuple(max(0, v - 90) for v in col)

    def body(k: Canvas) -> None:
        if cat == "cup":
            k.rect(cx - 0.35 * s, cy - 0.4 * s, cx + 0.3 * s, cy + 0.5 * s, col, dark)
            k.rect(cx + 0.3 * s, cy - 0.2 * s, cx + 0.55 * s, cy + 0.2 * s, dark)
        elif cat == "bottle":
            k.rect(cx - 0.25 * s, cy - 0.15 * s, cx + 0.25 * s, cy + 0.55 * s, col, dark)
            k.rect(cx - 0.1 * s, cy - 0.55 * s, cx + 0.1 * s, cy - 0.15 * s, col, dark)
        elif cat == "ball":
            k.ellipse(cx - 0.45 * s, cy - 0.45 * s, cx + 0.45 * s, cy + 0.45 * s, col, dark)
        elif cat == "box":
            k.rect(cx - 0.5 * s, cy - 0.4 * s, cx + 0.5 * s, cy + 0.4 * s, col, dark)
            k.line([(cx - 0.5 * s, cy), (cx + 0.5 * s, cy)], dark)
        elif cat == "knife":
            k.rect(cx - 0.55 * s, cy - 0.1 * s, cx - 0.1 * s, cy + 0.1 * s, col)
            k.rect(cx - 0.1 * s, cy - 0.12 * s, cx + 0.6 * s, cy + 0.04 * s, (200, 200, 210))
        elif cat == "plate":
            k.ellipse(cx - 0.6 * s, cy - 0.22 * s, cx + 0.6 * s, cy + 0.22 * s, col, dark)
            k.ellipse(cx - 0.35 * s, cy - 0.1 * s, cx + 0.35 * s, cy + 0.1 * s, dark)
        elif cat == "phone":
            k.rect(cx - 0.25 * s, cy - 0.5 * s, cx + 0.25 * s, cy + 0.5 * s, col)
            k.rect(cx - 0.15 * s, cy - 0.38 * s, cx + 0.15 * s, cy + 0.3 * s, (30, 30, 40))
        elif cat == "book":
            k.rect(cx - 0.45 * s, cy - 0.35 * s, cx + 0.45 * s, cy + 0.35 * s, col, dark)
            k.rect(cx - 0.45 * s, cy - 0.35 * s, cx - 0.3 * s, cy + 0.35 * s, (250, 250, 250))
        else:
            raise ValueError(f"unknown category {cat!r}")

    if transparent:
        c.blend(body, 0.35)
    else:
        body(c)


# Positions on the floor: depth ``z`` in [0, 1] (0 near, 1 far): near objects are bigger, lower.
def floor_pos(x: float, z: float, base: float = 0.17) -> tuple[float, float, float]:
    return x, 0.8 - 0.27 * z, base * (1.0 - 0.5 * z)


# ----------------------------------------------------------------------------- items

def _a(phrase: str) -> str:
    """The phrase with its indefinite article ('an orange cup')."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(cat: str) -> str:
    return {"knife": "knives", "box": "boxes"}.get(cat, cat + "s")


def _col_cat(rng) -> tuple[str, str]:
    return COLORS[rng.integers(8)], CATEGORIES[rng.integers(8)]


def _scatter(rng, n: int, avoid: list[float] | None = None) -> list[tuple[float, float]]:
    """``n`` (x, z) floor positions that do not overlap (on a jittered 5 x 2 grid)."""
    cells = [(i, j) for i in range(5) for j in range(2)]
    picks = rng.permutation(len(cells))[:n]
    out = []
    for p in picks:
        i, j = cells[p]
        out.append((0.1 + 0.2 * i + rng.uniform(-0.04, 0.04), 0.15 + 0.6 * j + rng.uniform(-0.1, 0.1)))
    return out


def _place(c: Canvas, rng, objs: list[tuple[str, str]], positions=None) -> list[dict]:
    positions = positions or _scatter(rng, len(objs))
    drawn = []
    order = sorted(range(len(objs)), key=lambda k: -positions[k][1])  # far first
    for k in order:
        (col, cat), (x, z) = objs[k], positions[k]
        cx, cy, s = floor_pos(x, z)
        draw_object(c, cat, col, cx, cy, s)
        drawn.append({"color": col, "category": cat, "x": cx, "y": cy, "size": s})
    return drawn


def _distractors(rng, n: int, exclude: set[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    while len(out) < n:
        cc = _col_cat(rng)
        if cc not in exclude and cc not in out:
            out.append(cc)
    return out


def _hold(c: Canvas, rng, col: str, cat: str, side: int, transparent: bool = False) -> dict:
    draw_hands(c)
    cx = 0.22 if side == 0 else 0.78
    draw_object(c, cat, col, cx, 0.82, 0.2, transparent)
    return {"color": col, "category": cat, "x": cx, "y": 0.82, "size": 0.2}


# Each builder draws one dimension's scene on ``c`` (the room is already drawn) and returns
# (question, reference answer, slots, question-derived fields, drawn objects).

def _existence(c: Canvas, rng, qtype: str, room: str):
    col, cat = _col_cat(rng)
    if qtype == "held":
        objects = _place(c, rng, _distractors(rng, int(rng.integers(0, 3)), {(col, cat)}))
        objects.append(_hold(c, rng, col, cat, int(rng.integers(2))))
        return "What am I holding in my hand?", f"A {cat}.", {"category": CATEGORIES.index(cat)}, {}, objects
    yes = bool(rng.integers(2))
    objs = _distractors(rng, int(rng.integers(1, 3)), {(col, cat)}) + ([(col, cat)] if yes else [])
    objects = _place(c, rng, objs)
    draw_hands(c)
    return (f"Is there {_a(col + ' ' + cat)} in front of me?", "Yes." if yes else "No.",
            {"yesno": int(yes)}, {"obj": f"{col} {cat}"}, objects)


def _attribute(c: Canvas, rng, qtype: str, room: str):
    if qtype == "color":
        col, cat = _col_cat(rng)
        objects = [_hold(c, rng, col, cat, int(rng.integers(2)))]
        return (f"What colour is the {cat} in my hand?", f"{col.capitalize()}.",
                {"color": COLORS.index(col)}, {"obj": cat}, objects)
    cat = ("cup", "bottle")[rng.integers(2)]
    col = COLORS[rng.integers(6)]  # not white/black: transparency must stay visible
    m = int(rng.integers(2))
    objects = [_hold(c, rng, col, cat, int(rng.integers(2)), transparent=(m == 0))]
    return (f"Is the {cat} in my hand transparent or opaque?", f"{MATERIALS[m].capitalize()}.",
            {"material": m}, {"obj": cat}, objects)


def _affordance(c: Canvas, rng, qtype: str, room: str):
    col, cat = _col_cat(rng)
    objects = [_hold(c, rng, col, cat, int(rng.integers(2)))]
    return ("What can I do with the object in my hand?", USES[CATEGORIES.index(cat)],
            {"use": CATEGORIES.index(cat)}, {}, objects)


def _activity(c: Canvas, rng, qtype: str, room: str):
    k = int(rng.integers(6))
    c.dx = rng.uniform(-0.05, 0.05)  # fixed scene layouts get a small random shift
    _draw_activity(c, k, rng)
    c.dx = 0.0
    return "What am I doing?", f"{VERBS[k]} {OBJECTS[k]}", {"verb": k, "obj": k}, {}, []


def _location(c: Canvas, rng, qtype: str, room: str):
    objects = _place(c, rng, _distractors(rng, int(rng.integers(0, 3)), set()))
    return "Where am I?", f"In the {room}.", {"room": ROOMS.index(room)}, {}, objects


def _spatial(c: Canvas, rng, qtype: str, room: str):
    col, cat = _col_cat(rng)
    side = int(rng.integers(2))
    if qtype == "hand":
        objects = [_hold(c, rng, col, cat, side)]
        return (f"Which hand am I holding the {cat} in?", f"My {SIDES[side]} hand.", {"side": side},
                {"obj": cat}, objects)
    x = rng.uniform(0.1, 0.38) if side == 0 else rng.uniform(0.62, 0.9)  # the wearer's left = image left
    others = _distractors(rng, int(rng.integers(0, 2)), {(col, cat)})
    pos = [(x, rng.uniform(0.1, 0.9))] + [(rng.uniform(0.1, 0.9), 0.9) for _ in others]
    objects = _place(c, rng, [(col, cat)] + others, pos)
    return (f"Is the {col} {cat} on my left or on my right?", f"On my {SIDES[side]}.", {"side": side},
            {"obj": f"{col} {cat}"}, objects)


def _counting(c: Canvas, rng, qtype: str, room: str):
    col, cat = _col_cat(rng)
    n = int(rng.integers(6))
    others = _distractors(rng, 3, {(col, cat)})[: int(rng.integers(0, 4))]
    objects = _place(c, rng, [(col, cat)] * n + others, _scatter(rng, n + len(others)))
    return (f"How many {col} {_plural(cat)} are there in front of me?", f"{NUMBERS[n]}.", {"count": n},
            {"obj": f"{col} {cat}"}, objects)


def _comparing(c: Canvas, rng, qtype: str, room: str):
    a1, a2 = _distractors(rng, 2, set())
    while a1[1] == a2[1]:
        a2 = _col_cat(rng)
    near = int(rng.integers(2))  # which of the two (in question order) is closer
    z_near, z_far = rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)
    xs = rng.permutation([rng.uniform(0.15, 0.4), rng.uniform(0.6, 0.85)])
    pos = [(xs[0], z_near if near == 0 else z_far), (xs[1], z_far if near == 0 else z_near)]
    objects = _place(c, rng, [a1, a2], pos)
    n1, n2 = f"{a1[0]} {a1[1]}", f"{a2[0]} {a2[1]}"
    return (f"Which is closer to me, the {n1} or the {n2}?", f"The {(n1, n2)[near]}.", {"choice": near},
            {"opt0": n1, "opt1": n2}, objects)


def _situated(c: Canvas, rng, qtype: str, room: str):
    yes = bool(rng.integers(2))
    cue = yes == SITUATIONS[qtype][1]
    c.dx = rng.uniform(-0.05, 0.05)
    _draw_situation(c, qtype, cue, rng)
    c.dx = 0.0
    return SITUATIONS[qtype][0], "Yes." if yes else "No.", {"yesno": int(yes)}, {}, []


def _forecasting(c: Canvas, rng, qtype: str, room: str):
    target = _col_cat(rng)
    others = _distractors(rng, int(rng.integers(1, 3)), {target})
    pos = _scatter(rng, 1 + len(others))
    objects = _place(c, rng, [target] + others, pos)
    tx, ty, _ = floor_pos(*pos[0])
    for k, f in enumerate((0.3, 0.55, 0.8)):  # a fading motion trail of the hand toward the target
        hx, hy = 0.5 + f * (tx - 0.5), 0.95 + f * (ty - 0.95)
        c.blend(lambda k_, x=hx, y=hy: k_.ellipse(x - 0.08, y - 0.05, x + 0.08, y + 0.05, SKIN), 0.3 + 0.3 * k)
    return ("What will I do next?", f"Pick up the {target[0]} {target[1]}.",
            {"color": COLORS.index(target[0]), "category": CATEGORIES.index(target[1])}, {}, objects)


def _navigation(c: Canvas, rng, qtype: str, room: str):
    col = COLORS[rng.integers(8)]
    # the 5 routes (left/right x near/far, or the end door) are equally likely, so no full
    # answer is more frequent than 1/5
    turn, depth = ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0))[rng.integers(5)]
    _draw_corridor(c, col, turn, depth, rng)
    if turn == 2:
        a, slots = f"Walk straight to the {col} door at the end of the corridor.", {"turn": 2}
    else:
        a = f"Walk forward {DEPTHS[depth]}, then turn {TURNS[turn]}, then go through the {col} door."
        slots = {"turn": turn, "depth": depth}
    return f"How do I get to the {col} door?", a, slots, {"color": col}, []


def _assistance(c: Canvas, rng, qtype: str, room: str):
    col, cat = _col_cat(rng)
    box = CONTAINERS[rng.integers(2)]
    s1, s2 = int(rng.integers(2)), int(rng.integers(2))  # object side, container side
    _draw_table(c, col, cat, box, s1, s2)
    draw_hands(c)
    a = (f"Reach out with my {SIDES[s1]} hand to the {col} {cat}, carry it to my {SIDES[s2]}, "
         f"then drop it into the {box}.")
    return (f"How can I put the {col} {cat} into the {box}?", a, {"side": s1, "side2": s2},
            {"obj": f"{col} {cat}", "box": box}, [])


BUILDERS = {"existence": _existence, "attribute": _attribute, "affordance": _affordance,
            "activity": _activity, "location": _location, "spatial": _spatial, "counting": _counting,
            "comparing": _comparing, "situated": _situated, "forecasting": _forecasting,
            "navigation": _navigation, "assistance": _assistance}


def _make_item(dim: str, qtype: str, rng: np.random.Generator, size: int) -> SynthItem:
    """One item: the room, the dimension's scene, exposure jitter, JPEG bytes."""
    if dim not in BUILDERS or qtype not in QTYPES[dim]:
        raise ValueError(f"unknown dim/qtype {dim}/{qtype}")
    c = Canvas(size) if size else NullCanvas()
    room = ROOMS[rng.integers(6)]
    draw_room(c, room, rng)
    q, a, slots, fields, objects = BUILDERS[dim](c, rng, qtype, room)
    gain = rng.uniform(0.9, 1.1)  # exposure jitter: no two scenes are byte-identical
    if c.img is not None:
        c.img = c.img.point(lambda v: min(255, int(v * gain)))
    return SynthItem(dim, qtype, q, a, slots, fields, c.jpeg(), objects)


def _draw_activity(c: Canvas, k: int, rng) -> None:
    draw_hands(c)
    if k == 0:  # cutting an apple: knife in the right hand, apple on a board
        c.rect(0.3, 0.62, 0.7, 0.78, (150, 100, 55))
        c.ellipse(0.42, 0.56, 0.56, 0.7, (200, 30, 30))
        draw_object(c, "knife", "black", 0.7, 0.72, 0.3)
    elif k == 1:  # pouring: a bottle tilted over a cup, a stream of water
        draw_object(c, "cup", COLORS[rng.integers(8)], 0.5, 0.72, 0.2)
        c.poly([(0.6, 0.42), (0.78, 0.55), (0.72, 0.63), (0.54, 0.5)], RGB["green"])
        c.line([(0.56, 0.5), (0.5, 0.66)], (90, 150, 255), width=2)
    elif k == 2:  # texting: a phone with a lit screen in both hands
        c.rect(0.4, 0.55, 0.6, 0.9, (40, 40, 40))
        c.rect(0.43, 0.58, 0.57, 0.84, (170, 235, 255))
    elif k == 3:  # reading: an open book across both hands
        c.rect(0.2, 0.55, 0.5, 0.85, (250, 250, 245), (90, 90, 90))
        c.rect(0.5, 0.55, 0.8, 0.85, (250, 250, 245), (90, 90, 90))
        for j in range(4):
            y = 0.6 + 0.06 * j
            c.line([(0.24, y), (0.46, y)], (60, 60, 60))
            c.line([(0.54, y), (0.76, y)], (60, 60, 60))
    elif k == 4:  # washing: a plate, a sponge, water drops
        draw_object(c, "plate", "white", 0.45, 0.7, 0.35)
        c.rect(0.62, 0.62, 0.74, 0.7, (240, 220, 50))
        for _ in range(6):
            x, y = rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.65)
            c.rect(x, y, x + 0.02, y + 0.03, (90, 150, 255))
    else:  # writing: paper and a pen in the right hand
        c.rect(0.3, 0.55, 0.65, 0.85, (252, 252, 252), (150, 150, 150))
        c.line([(0.72, 0.9), (0.55, 0.68)], (20, 20, 90), width=2)


def _draw_situation(c: Canvas, kind: str, cue: bool, rng) -> None:
    if kind == "traffic":
        draw_room(c, "street", rng)
        x = rng.uniform(0.3, 0.65)
        c.rect(x, 0.08, x + 0.12, 0.36, (30, 30, 30))
        c.ellipse(x + 0.02, 0.1, x + 0.1, 0.2, (40, 20, 20) if cue else (250, 30, 30))
        c.ellipse(x + 0.02, 0.24, x + 0.1, 0.34, (30, 250, 60) if cue else (20, 40, 20))
    elif kind == "stove":
        draw_room(c, "kitchen", rng)
        c.rect(0.25, 0.55, 0.75, 0.9, (60, 60, 65))
        c.ellipse(0.35, 0.6, 0.65, 0.75, (250, 100, 20) if cue else (90, 90, 90))
        c.rect(0.4, 0.5, 0.6, 0.65, (170, 170, 180))
    elif kind == "rain":
        draw_room(c, ("garden", "street")[rng.integers(2)], rng)
        if cue:
            for _ in range(25):
                x, y = rng.uniform(0, 1), rng.uniform(0, 0.9)
                c.line([(x, y), (x - 0.04, y + 0.1)], (200, 220, 255))
    else:  # dark room
        draw_room(c, ("kitchen", "living room", "office", "bathroom")[rng.integers(4)], rng)
        _place(c, rng, _distractors(rng, 2, set()))
        if cue and c.img is not None:
            c.img = c.img.point(lambda v: v // 5)
            c.d = c.draw_mod.Draw(c.img)
    draw_hands(c)


def _draw_corridor(c: Canvas, col: str, turn: int, depth: int, rng) -> None:
    c.rect(0, 0, 1, 1, (215, 215, 210))  # ceiling/end wall
    c.poly([(0, 0), (0.4, 0.35), (0.4, 0.65), (0, 1)], (185, 175, 160))  # left wall
    c.poly([(1, 0), (0.6, 0.35), (0.6, 0.65), (1, 1)], (185, 175, 160))  # right wall
    c.poly([(0, 1), (0.4, 0.65), (0.6, 0.65), (1, 1)], (120, 110, 100))  # floor
    doors = {(0, 0): [(0.05, 0.2), (0.16, 0.3), (0.16, 0.86), (0.05, 0.93)],
             (0, 1): [(0.25, 0.3), (0.32, 0.35), (0.32, 0.7), (0.25, 0.74)],
             (1, 0): [(0.95, 0.2), (0.84, 0.3), (0.84, 0.86), (0.95, 0.93)],
             (1, 1): [(0.75, 0.3), (0.68, 0.35), (0.68, 0.7), (0.75, 0.74)],
             (2, 0): [(0.45, 0.42), (0.55, 0.42), (0.55, 0.65), (0.45, 0.65)]}
    target = (turn, depth if turn < 2 else 0)
    others = [p for p in doors if p != target]
    rng.shuffle(others)
    distract = [cc for cc in COLORS if cc != col]
    for p in others[: int(rng.integers(1, 3))]:
        c.poly(doors[p], RGB[distract[rng.integers(len(distract))]])
    c.poly(doors[target], RGB[col])


def _draw_table(c: Canvas, col: str, cat: str, box: str, s1: int, s2: int) -> None:
    c.rect(0.02, 0.5, 0.98, 0.84, (160, 120, 80))  # table top
    bx = 0.28 if s2 == 0 else 0.72
    ox = 0.22 if s1 == 0 else 0.78
    if s1 == s2:  # both on one side: the object in front of the container
        bx += -0.1 if s2 == 0 else 0.1
        ox += 0.08 if s1 == 0 else -0.08
    fill = (150, 100, 40) if box == "basket" else (200, 190, 170)
    c.poly([(bx - 0.12, 0.55), (bx + 0.12, 0.55), (bx + 0.09, 0.7), (bx - 0.09, 0.7)], fill)
    c.line([(bx - 0.1, 0.6), (bx + 0.1, 0.6)], (90, 60, 20))
    draw_object(c, cat, col, ox, 0.72, 0.16)


# ----------------------------------------------------------------------------- sets

QUICK_SIZES = {d: (50 if d in ("activity", "forecasting") else 25) for d in DIM_KEYS}
FULL_SIZES = {d: BY_KEY[d].n_items for d in DIM_KEYS}


def sample_items(seed: int, sizes: dict[str, int], image_size: int = 64, *, split: str = "test") -> list[SynthItem]:
    """Items for ``sizes`` (``{dim: n}``), deterministic given ``seed``.

    Test seeds must be < 10**4 and train seeds >= 10**4 (so the two never share a scene).
    ``image_size=0`` samples questions, answers and slots without rendering.
    """
    if split == "test" and not 0 <= seed < 10**4:
        raise ValueError(f"seed: test seeds must be in [0, 10000), got {seed}")
    if split == "train" and seed < 10**4:
        raise ValueError(f"seed: train seeds must be >= 10000, got {seed}")
    items = []
    for di, d in enumerate(DIM_KEYS):
        for i in range(sizes.get(d, 0)):
            rng = np.random.default_rng([seed, di, i])
            qt = QTYPES[d][rng.integers(len(QTYPES[d]))]
            items.append(_make_item(d, qt, rng, image_size))
    return items


def scene_hash(item: SynthItem) -> str:
    return hashlib.sha256(item.question.encode() + item.answer.encode() + item.image).hexdigest()


def generate_synthetic(out: str | os.PathLike, n_per_dim: int | dict[str, int] = 25, seed: int = 0,
                       layout: str = "github", image_size: int = 64) -> Path:
    """Write EgoSynth-12 test items in an official layout, plus ``egosynth.json`` (slots).

    Parameters
    ----------
    out : path
        Output root.
    n_per_dim : int or dict
        Items per dimension; an int ``n`` gives ``2n`` to Activity and Forecasting (EgoThink's
        2:1 ratio), a dict sets each size.
    seed : int
        Test seed in [0, 10000).
    layout : {"github", "parquet"}
    image_size : int
        Square image side in pixels (64 quick, 128 full).
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
    from cvpr24.egothink.data import EgoThinkDataset, EgoThinkItem, write_github, write_parquet

    if isinstance(n_per_dim, int):
        if n_per_dim < 1:
            raise ValueError(f"n_per_dim must be >= 1, got {n_per_dim}")
        sizes = {d: n_per_dim * (2 if d in ("activity", "forecasting") else 1) for d in DIM_KEYS}
    else:
        sizes = dict(n_per_dim)
    if layout not in ("github", "parquet"):
        raise ValueError(f"layout must be 'github' or 'parquet', got {layout!r}")
    items = sample_items(seed, sizes, image_size)
    ds_items, meta, counters = [], {}, {}
    for it in items:
        k = counters.get(it.dim, 0)
        counters[it.dim] = k + 1
        ds_items.append(EgoThinkItem(it.dim, k, it.question, it.answer, image_data=it.image, source="egosynth"))
        meta[f"{it.dim}/{k}"] = {"qtype": it.qtype, "slots": it.slots, "fields": it.fields}
    ds = EgoThinkDataset(ds_items)
    root = Path(out)
    (write_github if layout == "github" else write_parquet)(ds, root)
    with atomic_write(root / "egosynth.json") as f:
        json.dump({"seed": seed, "image_size": image_size, "items": meta}, f, indent=1)
    return root


# ----------------------------------------------------------------------------- verbalizer

@dataclass(frozen=True)
class Paraphrases:
    """One family of paraphrase templates for the verbalizer: a tuple of templates per answer
    kind, object synonyms, and the refusal sentence."""

    templates: dict[str, tuple[str, ...]]
    synonyms: dict[str, str]
    refusal: str


#: The *dev* paraphrases, the only ones used while writing LocalJudge. The reproduction
#: verbalizes with its own held-out family (``reproduce.HELDOUT_PARAPHRASES``), which
#: LocalJudge never sees.
DEV_PARAPHRASES = Paraphrases(
    templates={
        "category": ("A {cat}.", "{Cat}.", "It is a {cat}."),
        "yesno": ("{Yes}.", "{Yes}, I think so."),
        "color": ("{Col}.", "The {obj} is {col}."),
        "material": ("{Mat}.", "The {obj} is {mat}."),
        "use": ("{use}", "I can {use_l}"),
        "activity": ("{verb} {object}", "{Verb} {object}."),
        "room": ("In the {room}.", "The {room}."),
        "side": ("On my {side}.", "{Side}."),
        "hand": ("My {side} hand.", "The {side} hand."),
        "count": ("{Num}.", "{digit}"),
        "choice": ("The {opt}.", "{Opt}."),
        "next": ("Pick up the {obj}.", "Grab the {obj}."),
        "route": ("{route}", "{route}"),
        "plan": ("{plan}", "{plan}"),
    },
    synonyms={"cup": "cup", "phone": "phone", "box": "box"},
    refusal="I can't tell from the image.")
REFUSAL_CONFIDENCE, REFUSAL_P = 0.3, 0.5  # refuse w.p. 0.5 when max softmax < 0.3


def answer_kind(dim: str, qtype: str) -> str:
    return {"held": "category", "there": "yesno", "color": "color", "material": "material", "use": "use",
            "doing": "activity", "where": "room", "side_of": "side", "hand": "hand", "how_many": "count",
            "closer": "choice", "next": "next", "route": "route", "plan": "plan"}.get(
        qtype, "yesno")


def verbalize(dim: str, qtype: str, fields: dict[str, str], slots: dict[str, int],
              rng: np.random.Generator, paraphrases: Paraphrases = DEV_PARAPHRASES,
              confidence: float = 1.0) -> tuple[str, bool]:
    """Free text for predicted ``slots``: (answer, refused).

    ``paraphrases`` is the template family (the dev one by default; the reproduction passes
    its held-out family); ``confidence`` is the model's lowest max-softmax over the item's
    slots (refusal with probability 0.5 below 0.3).
    """
    if confidence < REFUSAL_CONFIDENCE and rng.random() < REFUSAL_P:
        return paraphrases.refusal, True
    kind = answer_kind(dim, qtype)
    pool = paraphrases.templates[kind]
    tpl = pool[rng.integers(len(pool))]
    syn = paraphrases.synonyms
    v: dict[str, str] = {}
    if "category" in slots:
        cat = CATEGORIES[slots["category"]]
        v.update(cat=cat, Cat=cat.capitalize(), syn=syn.get(cat, cat))
    if "yesno" in slots:
        yes = slots["yesno"] == 1
        v.update(Yes="Yes" if yes else "No", there="there is" if yes else "there isn't")
    if "color" in slots:
        v.update(col=COLORS[slots["color"]], Col=COLORS[slots["color"]].capitalize())
    if "material" in slots:
        v.update(mat=MATERIALS[slots["material"]], Mat=MATERIALS[slots["material"]].capitalize())
    if "use" in slots:
        u = USES[slots["use"]]
        v.update(use=u, use_l=u[0].lower() + u[1:])
    if "verb" in slots:
        v.update(verb=VERBS[slots["verb"]], Verb=VERBS[slots["verb"]].capitalize(), object=OBJECTS[slots["obj"]])
    if "room" in slots:
        v.update(room=ROOMS[slots["room"]])
    if "side" in slots:
        v.update(side=SIDES[slots["side"]], Side=SIDES[slots["side"]].capitalize())
    if "count" in slots:
        n = slots["count"]
        v.update(Num=NUMBERS[n], num=NUMBERS[n].lower(), digit=str(n))
    if "choice" in slots:
        o = fields[f"opt{slots['choice']}"]
        v.update(opt=o, Opt=o[0].upper() + o[1:])
    if kind == "next":
        v["obj"] = f"{COLORS[slots['color']]} {syn.get(CATEGORIES[slots['category']], CATEGORIES[slots['category']])}"
    elif "obj" in fields:
        v["obj"] = fields["obj"]
    if kind == "route":
        col = fields["color"]
        v["route"] = (f"Walk straight to the {col} door at the end of the corridor." if slots["turn"] == 2 else
                      f"Walk forward {DEPTHS[slots['depth']]}, then turn {TURNS[slots['turn']]}, "
                      f"then go through the {col} door.")
    if kind == "plan":
        v["plan"] = (f"Reach out with my {SIDES[slots['side']]} hand to the {fields['obj']}, carry it to my "
                     f"{SIDES[slots['side2']]}, then drop it into the {fields['box']}.")
    return tpl.format(**v), False


def asserted_slots(dim: str, qtype: str, slots: dict[str, int]) -> dict[str, int]:
    """The slots an answer actually states (a route to the end states no distance)."""
    if qtype == "route" and slots.get("turn") == 2:
        return {"turn": 2}
    return dict(slots)


def oracle_score(truth: dict[str, int], predicted: dict[str, int], refused: bool, dim: str, qtype: str) -> float:
    """The judge prompt's semantics on slots: 1 if every answer slot is right, 0.5 if at least
    half are (multi-slot answers only), 0 otherwise; a refusal is 0. A slot of the reference
    that the answer does not state counts as wrong."""
    if refused:
        return 0.0
    said = asserted_slots(dim, qtype, predicted)
    right = sum(said.get(k) == v for k, v in truth.items())
    if right == len(truth):
        return 1.0
    return 0.5 if len(truth) > 1 and right >= len(truth) / 2 else 0.0
