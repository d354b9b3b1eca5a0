"""Digit scenes: a deterministic, captioned offline test bed for text-to-image (issue 11).

Each scene is a 32x32 grey canvas holding one to three of the bundled digits, each with
a size (``small`` 10 px, ``large`` 16 px) and a stroke (``thin``: the digit as drawn,
``thick``: dilated), and a caption that states the digits, some of their attributes and
their arrangement, e.g. "a small 3 to the left of a thick 7" or "a 1, a thick 4 and a 9
from left to right". Scene ``i`` of a split is a pure function of ``(seed, split, i)``.

Splits:
* ``train``: glyphs of the digits ``train`` split; two-digit scenes never use a
  :data:`HELDOUT_PAIRS` pair.
* ``heldout``: glyphs of the digits ``heldout`` split (never trained on), the train
  caption distribution: the reference for FD and caption accuracy.
* ``novel``: held-out glyphs, and every two-digit scene uses a :data:`HELDOUT_PAIRS` pair
  (caption combinations never seen in training: compositional generalisation).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
from PIL import Image
from scipy import ndimage

from diffusion.data import digits

CANVAS = 32
SIZES = {"small": 10, "large": 16}
STROKES = ("thin", "thick")
RELATIONS = {"left": "to the left of", "above": "above"}
SPLITS = ("train", "heldout", "novel")
# ordered digit pairs (first, second) of two-digit scenes kept out of training: 10 of 100
HELDOUT_PAIRS = frozenset((a, b) for a in range(10) for b in range(10) if (3 * a + b) % 10 == 0)
MAX_OBJECTS = 3
_NUM_OBJECTS_P = (0.3, 0.5, 0.2)


@dataclasses.dataclass(frozen=True)
class Mention:
    """One digit as a caption states it: ``size`` / ``stroke`` are None when not stated."""

    digit: int
    size: str | None = None
    stroke: str | None = None

    def text(self) -> str:
        return " ".join(["a"] + [w for w in (self.size, self.stroke) if w] + [str(self.digit)])


@dataclasses.dataclass(frozen=True)
class Caption:
    """What a caption asserts: the mentioned digits in order, and their arrangement
    (``None`` for one digit, ``"left"`` / ``"above"`` for two, ``"row"`` for three: left
    to right)."""

    mentions: tuple[Mention, ...]
    relation: str | None = None

    def text(self) -> str:
        m = [x.text() for x in self.mentions]
        if self.relation is None:
            return m[0]
        if self.relation == "row":
            return f"{m[0]}, {m[1]} and {m[2]} from left to right"
        return f"{m[0]} {RELATIONS[self.relation]} {m[1]}"


_MENTION = r"a(?: (small|large))?(?: (thin|thick))? (\d)"


def parse_caption(text: str) -> Caption:
    """The inverse of :meth:`Caption.text`; a clear error for text outside the grammar."""
    patterns = [
        (rf"^{_MENTION}$", None),
        (rf"^{_MENTION} to the left of {_MENTION}$", "left"),
        (rf"^{_MENTION} above {_MENTION}$", "above"),
        (rf"^{_MENTION}, {_MENTION} and {_MENTION} from left to right$", "row"),
    ]
    for pattern, relation in patterns:
        m = re.match(pattern, text.strip())
        if m:
            g = m.groups()
            mentions = tuple(Mention(int(g[i + 2]), g[i], g[i + 1]) for i in range(0, len(g), 3))
            return Caption(mentions, relation)
    raise ValueError(f"caption {text!r} is not in the digit-scenes grammar: 'a [small|large] [thin|thick] D', "
                     "'<digit> to the left of <digit>', '<digit> above <digit>' or "
                     "'<digit>, <digit> and <digit> from left to right'")


@dataclasses.dataclass(frozen=True)
class Placed:
    """A drawn digit: ``x, y`` its top-left corner on the canvas, ``glyph`` its index in
    the split's digit images."""

    digit: int
    size: str
    stroke: str
    x: int
    y: int
    glyph: int

    @property
    def side(self) -> int:
        return SIZES[self.size]

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.side / 2, self.y + self.side / 2


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[Placed, ...]
    caption: Caption


@functools.lru_cache(maxsize=None)
def _glyphs(split: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """``(levels [N, 8, 8] float32 in [0, 1], indices of each class)`` of the glyph split."""
    images, labels = digits.load_digits("train" if split == "train" else "heldout")
    levels = (images[..., 0] + 1.0) / 2.0
    return levels, tuple(np.flatnonzero(labels == d) for d in range(10))


@functools.lru_cache(maxsize=4096)
def render_glyph(split: str, glyph: int, size: str, stroke: str) -> np.ndarray:
    """One digit ``[side, side]`` in ``[0, 1]``: bilinear resize, then a 3x3 grey
    dilation (2x2 when small) for ``thick``."""
    side = SIZES[size]
    img = Image.fromarray(_glyphs(split)[0][glyph]).resize((side, side), Image.BILINEAR)
    out = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
    if stroke == "thick":
        out = ndimage.grey_dilation(out, size=(3, 3) if size == "large" else (2, 2))
    return out


def _layout(rng: np.random.Generator, sides: list[int], relation: str | None) -> list[tuple[int, int]]:
    """Top-left corners: anywhere for one digit; strictly ordered along x (``left``,
    ``row``) or y (``above``) for several, the other coordinate free."""
    def ordered(n_sides):  # positions along one axis with the digits in order, not overlapping
        slack = CANVAS - sum(n_sides)
        cuts = np.sort(rng.integers(0, slack + 1, size=len(n_sides)))
        return [int(c + sum(n_sides[:i])) for i, c in enumerate(cuts)]

    free = [int(rng.integers(0, CANVAS - s + 1)) for s in sides]
    if relation is None:
        return [(int(rng.integers(0, CANVAS - sides[0] + 1)), free[0])]
    along = ordered(sides)
    return list(zip(free, along)) if relation == "above" else list(zip(along, free))


def make_scene(split: str, index: int, seed: int = 0) -> Scene:
    """Scene ``index`` of ``split`` (a pure function of its arguments)."""
    if split not in SPLITS:
        raise ValueError(f"unknown scenes split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = np.random.default_rng((seed, SPLITS.index(split), int(index)))
    n = int(rng.choice(3, p=_NUM_OBJECTS_P)) + 1
    relation = {1: None, 2: ("left", "above")[int(rng.integers(2))], 3: "row"}[n]
    digits_ = [int(d) for d in rng.integers(0, 10, size=n)]
    if n == 2:
        while ((digits_[0], digits_[1]) in HELDOUT_PAIRS) != (split == "novel"):
            digits_[1] = int(rng.integers(0, 10))
    sizes = ["small"] * n if n == 3 else [("small", "large")[int(i)] for i in rng.integers(0, 2, size=n)]
    strokes = [STROKES[int(i)] for i in rng.integers(0, 2, size=n)]
    stated = rng.random((n, 2)) < 0.5
    classes = _glyphs(split)[1]
    glyphs = [int(classes[d][rng.integers(len(classes[d]))]) for d in digits_]
    corners = _layout(rng, [SIZES[s] for s in sizes], relation)
    objects = tuple(Placed(d, s, k, x, y, g) for d, s, k, (x, y), g in zip(digits_, sizes, strokes, corners, glyphs))
    mentions = tuple(Mention(o.digit, o.size if st[0] and n < 3 else None, o.stroke if st[1] else None)
                     for o, st in zip(objects, stated))
    return Scene(objects, Caption(mentions, relation))


def render(scene: Scene, split: str) -> np.ndarray:
    """``[32, 32, 1]`` float32 in ``[-1, 1]``: the digits drawn with ``max`` on black."""
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    for o in scene.objects:
        g = render_glyph(split, o.glyph, o.size, o.stroke)
        window = canvas[o.y:o.y + o.side, o.x:o.x + o.side]
        np.maximum(window, g, out=window)
    return (2.0 * canvas - 1.0)[..., None]


def truth(scene: Scene) -> dict[str, np.ndarray]:
    """Ground truth for the scene parser, padded to :data:`MAX_OBJECTS` (``-1`` = none):
    ``digit``, ``size`` (0 small, 1 large), ``stroke`` (0 thin, 1 thick) ``[3]`` int32 and
    ``center`` ``[3, 2]`` float32 (x, y in pixels)."""
    out = {"digit": np.full(MAX_OBJECTS, -1, np.int32), "size": np.full(MAX_OBJECTS, -1, np.int32),
           "stroke": np.full(MAX_OBJECTS, -1, np.int32), "center": np.full((MAX_OBJECTS, 2), -1.0, np.float32)}
    for i, o in enumerate(scene.objects):
        out["digit"][i], out["size"][i] = o.digit, list(SIZES).index(o.size)
        out["stroke"][i], out["center"][i] = STROKES.index(o.stroke), o.center
    return out


class ScenesSource:
    """Random-access source of ``{"image": [32, 32, 1] float32, "caption": str}``:
    ``size`` scenes of ``split``, generated on access (the parser's ground truth of scene
    ``i`` is ``truth(make_scene(split, i, seed))``)."""

    def __init__(self, split: str, size: int, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"unknown scenes split {split!r}; expected one of {', '.join(SPLITS)}")
        if size < 1:
            raise ValueError(f"a scenes source needs size >= 1, got {size}")
        self.split, self.size, self.seed = split, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.size:
            raise IndexError(f"scene {i} out of range [0, {self.size})")
        scene = make_scene(self.split, i, self.seed)
        return {"image": render(scene, self.split), "caption": np.str_(scene.caption.text())}
