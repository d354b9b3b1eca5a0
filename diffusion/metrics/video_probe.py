"""The video probe: a small spatio-temporal network Kairos trains on moving digits, whose
features give the video metrics (``video_metrics.py``: an FVD-style Frechet distance,
per-frame FD, identity stability).

Two paths: a CNN per frame reads the 16x16 canvas (appearance), a CNN per pair of
consecutive frames followed by two temporal convolutions reads motion; the video feature
is the mean of each. It is trained on the generator's ground truth, never on generated
or corrupted videos: which digit classes are in each frame (multi-label), how many
digits there are, and each frame pair's mean displacement. That the video features also
separate real from frame-shuffled, static and noise videos is then a finding, tested in
``tests/metrics/test_video_metrics.py``. On held-out glyphs the per-frame digit set is
exactly right in 80% of frames (the digits overlap when they cross), so identity
stability reads about 0.52 on real videos: compare models against that, not against 1.

Fixed seeds and video indices (``fit`` is deterministic on one machine; the scene parser's test checks it). The params of :data:`RECIPE` ship beside
this file (checked against :data:`SHIPPED_SHA256`, like the scene parser's); another
recipe trains once into ``$KAIROS_CACHE`` (the shipped one took 24 minutes on 2 busy CPU cores).
"""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion.data import moving_digits as md
from diffusion.metrics.param_cache import cached_params, fit

RECIPE = dict(version=2, width=64, features=64, videos=8000, frames=8, epochs=24, batch=64, lr=2e-3, seed=0)
SHIPPED = pathlib.Path(__file__).with_name("video_probe_3a3b8e341c0c.npz")  # cache_path's name for RECIPE
SHIPPED_SHA256 = "4734d2a8588a3ec547a45432163db9f4be0fafbfa56669a2ac8060b834fe2c42"


class VideoProbe(nn.Module):
    """``[B, F, 16, 16, 1]`` in ``[-1, 1]`` (any ``F >= 2``) -> ``(heads, frame features
    [B, F, features], video features [B, 2 * features])``.

    Two paths. Appearance: a CNN per frame (its spatial layout kept until the last dense
    layer). Motion: a CNN per pair of consecutive frames (the two as channels), then two
    temporal convolutions over the pairs. The video feature is the frames' mean appearance
    next to the pairs' mean motion. Heads: ``{"digits": [B, F, 10] logits, "count": [B, 2]
    logits (1 or 2 digits), "speed": [B, F - 1] each pair's mean displacement}``."""

    width: int = 32
    features: int = 64

    def _cnn(self, h, prefix: str):
        w = self.width
        h = nn.relu(nn.Conv(w // 2, (3, 3), name=f"{prefix}_conv_0")(h))  # 16x16
        h = nn.relu(nn.Conv(w, (3, 3), strides=2, name=f"{prefix}_conv_1")(h))  # 8x8
        h = nn.relu(nn.Conv(w, (3, 3), strides=2, name=f"{prefix}_conv_2")(h))  # 4x4
        return nn.relu(nn.Dense(self.features, name=f"{prefix}_dense")(h.reshape(h.shape[0], -1)))

    @nn.compact
    def __call__(self, x):
        b, f = x.shape[:2]
        frame = self._cnn(x.reshape(b * f, *x.shape[2:]), "frame").reshape(b, f, -1)  # [B, F, D]
        pairs = jnp.concatenate([x[:, :-1], x[:, 1:]], axis=-1)  # [B, F - 1, H, W, 2]
        motion = self._cnn(pairs.reshape(b * (f - 1), *pairs.shape[2:]), "pair").reshape(b, f - 1, -1)
        speed = nn.Dense(1, name="speed")(motion)[..., 0]
        t = nn.relu(nn.Conv(self.features, (3,), name="temporal_0")(motion))  # over the pairs
        t = nn.relu(nn.Conv(self.features, (3,), name="temporal_1")(t))
        video = jnp.concatenate([frame.mean(axis=1), t.mean(axis=1)], axis=-1)
        heads = {"digits": nn.Dense(10, name="digits")(frame), "count": nn.Dense(2, name="count")(video),
                 "speed": speed}
        return heads, frame, video


def video_targets(split: str, start: int, count: int, frames: int) -> tuple[np.ndarray, dict]:
    """``(videos [count, frames, 16, 16, 1], targets)`` of videos ``start..`` of ``split``:
    ``digits [count, 10]`` multi-hot (constant over frames), ``count [count]`` (0: one
    digit, 1: two) and ``speed [count, frames - 1]`` (each consecutive pair's mean over
    digits of ``(|dx| + |dy|) / 2``, bounces included)."""
    videos, hot = [], np.zeros((count, 10), np.float32)
    num, speed = np.zeros(count, np.int32), np.zeros((count, frames - 1), np.float32)
    limit = md.CANVAS - md.GLYPH
    for i in range(count):
        movers = md.make_movers(split, start + i)
        videos.append(md.render(movers, split, frames))
        for m in movers:
            hot[i, m.digit] = 1.0
            dx = np.abs(np.diff(md.bounce(m.x, m.vx, frames, limit)))
            dy = np.abs(np.diff(md.bounce(m.y, m.vy, frames, limit)))
            speed[i] += (dx + dy) / 2 / len(movers)
        num[i] = len(movers) - 1
    return np.stack(videos), {"digits": hot, "count": num, "speed": speed}


def _loss(heads, targets):
    digits = optax.sigmoid_binary_cross_entropy(heads["digits"], targets["digits"][:, None, :]).mean()
    count = optax.softmax_cross_entropy_with_integer_labels(heads["count"], targets["count"]).mean()
    return 10.0 * digits + count + jnp.mean((heads["speed"] - targets["speed"]) ** 2)


def train_probe(verbose: bool = False) -> dict:
    """Trains the probe from scratch on ``RECIPE["videos"]`` train videos; returns params."""
    x, targets = video_targets("train", 0, RECIPE["videos"], RECIPE["frames"])
    model = VideoProbe(RECIPE["width"], RECIPE["features"])
    params = model.init(jax.random.PRNGKey(RECIPE["seed"]), x[:1])["params"]
    steps = RECIPE["epochs"] * (len(x) // RECIPE["batch"])
    opt = optax.adam(optax.cosine_decay_schedule(RECIPE["lr"], steps))
    loss_fn = lambda p, xb, tb: _loss(model.apply({"params": p}, xb)[0], tb)  # noqa: E731
    return fit(params, opt, loss_fn, lambda rng: (x, targets), len(x), RECIPE["epochs"], RECIPE["batch"],
               RECIPE["seed"], "video probe", verbose)


def load_probe() -> dict:
    """The probe params: shipped for :data:`RECIPE`, else cached, else trained (and cached)."""
    return cached_params("video_probe", RECIPE, train_probe, {SHIPPED: SHIPPED_SHA256})


_APPLY = {}


def run_probe(videos: np.ndarray, batch: int = 128) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``[N, F, 16, 16, 1]`` in ``[-1, 1]`` (clipped) -> ``(heads, frame features [N, F, D],
    video features [N, D])`` as NumPy. One compile per frame count."""
    videos = np.clip(np.asarray(videos, np.float32), -1.0, 1.0)
    if videos.ndim != 5 or videos.shape[2:] != (md.CANVAS, md.CANVAS, 1) or videos.shape[1] < 2:
        raise ValueError(f"the video probe reads moving-digits videos [N, F >= 2, 16, 16, 1], got {videos.shape}")
    if "fn" not in _APPLY:
        params, model = load_probe(), VideoProbe(RECIPE["width"], RECIPE["features"])
        _APPLY["fn"] = jax.jit(lambda x: model.apply({"params": params}, x))
    out = []
    for i in range(0, len(videos), batch):
        chunk = videos[i:i + batch]
        padded = np.pad(chunk, ((0, batch - len(chunk)),) + ((0, 0),) * 4)
        out.append(jax.tree.map(lambda a: np.asarray(a)[:len(chunk)], _APPLY["fn"](jnp.asarray(padded))))
    heads = {k: np.concatenate([o[0][k] for o in out]) for k in out[0][0]}
    return heads, np.concatenate([o[1] for o in out]), np.concatenate([o[2] for o in out])
