"""Video sampling with per-frame plans (FVDM, docs/design/video.md): given frames from a
data split, the long-video window loop, and animated GIFs."""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Mapping

import jax
import numpy as np

from orchestration.build.builders import build_source
from orchestration.generation.generate import generate
from sampling.spec import SamplerSpec
from sampling.transforms.plan import given_frames

WINDOW_KEY_OFFSET = 2**20  # window w >= 1 of a long video draws from fold_in(PRNGKey(seed), offset + w)


def video_length(spec: SamplerSpec, frames: int) -> int:
    """Frames of each sampled video: the plan's length for long video, else the model's ``frames``."""
    knobs = spec.knobs("plan")
    return knobs["length"] if knobs is not None and knobs["kind"] == "long" else frames


def needs_truth(spec: SamplerSpec, frames: int) -> bool:
    """Whether the sampler's plan gives frames (which come from a data split)."""
    knobs = spec.knobs("plan")
    return knobs is not None and bool(given_frames(knobs, frames))


def truth_videos(config: Any, split: str, num: int, frames: int) -> np.ndarray:
    """``[num, frames, H, W, C]`` float32 in ``[-1, 1]``: the first ``num`` videos of
    ``split`` of the run's dataset, ``frames`` long (the ground truth a plan gives frames
    from and is scored against)."""
    source, _ = build_source(_with_frames(config, frames), split)
    if num > len(source):
        raise ValueError(f"--num {num} videos asked, but the {split!r} split holds {len(source)}: lower --num")
    return np.stack([np.asarray(source[i]["image"], np.float32) for i in range(num)])


def _with_frames(config: Any, frames: int):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.frames = frames
    return config


def generate_video(denoiser: Any, params: Any, shape: tuple[int, ...], num: int, spec: SamplerSpec, caps: Any, *,
                   truth: np.ndarray | None = None, seed: int = 0, batch_size: int = 500,
                   labels: np.ndarray | None = None, progress: bool = False,
                   external: Mapping[str, Callable[..., Any]] | None = None, mesh: Any = None) -> np.ndarray:
    """``[num, L, H, W, C]`` videos of a video model (``shape = (F, H, W, C)``) under the
    spec's plan; ``L`` is the long-video length or ``F``.

    The plan's given frames come from ``truth [num, >= F, H, W, C]``. Long video: the first
    window is the plan's own (its given frames, if any); window ``w >= 1`` gives its first
    ``F // 2`` frames, the previous window's last ones, and keeps its ``F - F // 2`` new
    ones. Every window is the same compiled sampler. ``mesh``: each window's batches split
    over its devices, as in :func:`orchestration.generation.generate.generate`."""
    frames = shape[0]
    knobs = spec.knobs("plan")
    run = lambda given, key=None: generate(  # noqa: E731
        denoiser, params, shape, num, spec, caps, batch_size=batch_size, seed=seed, labels=labels,
        progress=progress, external=external, given=given, key=key, mesh=mesh)
    if knobs is None:
        return run(None)
    first = given_frames(knobs, frames)
    if first and (truth is None or truth.shape[0] != num or truth.shape[1] < frames):
        raise ValueError(f"the {knobs['kind']} plan gives frame(s) {list(first)}: it needs {num} ground-truth "
                         f"videos of at least {frames} frames")
    mask = np.zeros((num, frames), bool)
    mask[:, list(first)] = True
    x_given = np.zeros((num, *shape), np.float32)
    if first:
        x_given[:, list(first)] = truth[:, list(first)]
    video = run((mask, x_given))
    length = video_length(spec, frames)
    keep = frames // 2
    window = 1
    while video.shape[1] < length:
        mask = np.zeros((num, frames), bool)
        mask[:, :keep] = True
        x_given = np.zeros((num, *shape), np.float32)
        x_given[:, :keep] = video[:, video.shape[1] - keep:]
        key = jax.random.fold_in(jax.random.PRNGKey(seed), WINDOW_KEY_OFFSET + window)
        video = np.concatenate([video, run((mask, x_given), key)[:, keep:]], axis=1)
        window += 1
    return video[:, :length]


def save_gif(videos: np.ndarray, path: pathlib.Path, *, ncol: int = 8, scale: int = 4, fps: int = 8) -> None:
    """An animated GIF (Pillow's writer) of up to ``ncol * ncol`` videos ``[N, F, H, W, C]``
    uint8, tiled ``ncol`` wide with a 1-pixel gap, looping."""
    from PIL import Image

    videos = np.asarray(videos)[: ncol * ncol]
    n, f, h, w, c = videos.shape
    cols = min(ncol, n)
    rows = -(-n // cols)
    canvas = np.zeros((f, rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = videos[i]
    canvas = canvas.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(frame[..., 0] if c == 1 else frame) for frame in canvas]
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
