"""Moving digits: a deterministic, offline video test bed (issue 12).

Each video shows one or two of the bundled 8x8 digits moving in a 16x16 black canvas with
integer velocities, bouncing off the walls (drawn with ``max``). Video ``i`` of a split is
a pure function of ``(seed, split, i)`` and not of the frame count: the first ``F`` frames
of a longer video are the shorter video, so a held-out video's ground-truth continuation
is the same video with more frames.

Splits: ``train`` uses glyphs of the digits ``train`` split, ``heldout`` only glyphs of the
digits ``heldout`` split (never in a training video).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffusion.data import digits

CANVAS = 16
GLYPH = 8
SPLITS = ("train", "heldout")
MAX_DIGITS = 2
SPEEDS = (-2, -1, 1, 2)  # pixels per frame along each axis
_NUM_DIGITS_P = (0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Mover:
    """One digit: its class, glyph (index into the split's digits), start corner and velocity."""

    digit: int
    glyph: int
    x: int
    y: int
    vx: int
    vy: int


def bounce(start: int, velocity: int, frames: int, limit: int) -> np.ndarray:
    """``[frames]`` positions in ``[0, limit]`` of a point starting at ``start`` moving
    ``velocity`` per frame and reflecting off ``0`` and ``limit`` (a triangle wave)."""
    period = 2 * limit
    p = np.mod(start + velocity * np.arange(frames), period)
    return np.where(p <= limit, p, period - p).astype(np.int64)


def make_movers(split: str, index: int, seed: int = 0) -> tuple[Mover, ...]:
    """The digits of video ``index`` of ``split`` (a pure function of its arguments)."""
    if split not in SPLITS:
        raise ValueError(f"unknown moving-digits split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = np.random.default_rng((seed, SPLITS.index(split), int(index)))
    n = int(rng.choice(MAX_DIGITS, p=_NUM_DIGITS_P)) + 1
    _, labels = _glyphs(split)
    limit = CANVAS - GLYPH
    out = []
    for _ in range(n):
        glyph = int(rng.integers(len(labels)))
        x, y = (int(v) for v in rng.integers(0, limit + 1, size=2))
        vx, vy = (int(SPEEDS[k]) for k in rng.integers(len(SPEEDS), size=2))
        out.append(Mover(int(labels[glyph]), glyph, x, y, vx, vy))
    return tuple(out)


def _glyphs(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(levels [N, 8, 8] float32 in [0, 1], labels [N])`` of the glyph split."""
    images, labels = digits.load_digits(split)
    return (images[..., 0] + 1.0) / 2.0, labels


def render(movers: tuple[Mover, ...], split: str, frames: int) -> np.ndarray:
    """``[frames, 16, 16, 1]`` float32 in ``[-1, 1]``."""
    levels, _ = _glyphs(split)
    video = np.zeros((frames, CANVAS, CANVAS), np.float32)
    limit = CANVAS - GLYPH
    for m in movers:
        xs, ys = bounce(m.x, m.vx, frames, limit), bounce(m.y, m.vy, frames, limit)
        for f in range(frames):
            window = video[f, ys[f]:ys[f] + GLYPH, xs[f]:xs[f] + GLYPH]
            np.maximum(window, levels[m.glyph], out=window)
    return (2.0 * video - 1.0)[..., None]


def digit_classes(movers: tuple[Mover, ...]) -> np.ndarray:
    """``[MAX_DIGITS]`` int32 classes of the video's digits, ``-1`` padded."""
    out = np.full(MAX_DIGITS, -1, np.int32)
    out[:len(movers)] = [m.digit for m in movers]
    return out


class MovingDigitsSource:
    """Random-access source of ``{"image": [frames, 16, 16, 1] float32, "label": int32 (the
    first digit's class), "digits": [2] int32}``: ``size`` videos of ``split``, made on access."""

    def __init__(self, split: str, size: int, frames: int, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"unknown moving-digits split {split!r}; expected one of {', '.join(SPLITS)}")
        if size < 1:
            raise ValueError(f"a moving-digits source needs size >= 1, got {size}")
        if frames < 1:
            raise ValueError(f"a moving-digits video needs frames >= 1, got {frames}")
        self.split, self.size, self.frames, self.seed = split, size, frames, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.size:
            raise IndexError(f"video {i} out of range [0, {self.size})")
        movers = make_movers(self.split, i, self.seed)
        classes = digit_classes(movers)
        return {"image": render(movers, self.split, self.frames), "label": classes[0], "digits": classes}
