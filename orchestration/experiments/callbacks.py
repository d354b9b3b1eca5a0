"""Training callbacks that ``launch/`` hands the loop: sample grids and the final FD-digits."""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections

from diffusion.data import DatasetInfo
from diffusion.metrics.grid import save_grid
from diffusion.train.state import TrainState
from orchestration.workdir import files
from orchestration.generation.generate import class_labels, generate
from orchestration.workdir.phast_files import external_for
from sampling.registry import ModelCaps
from sampling.spec import SamplerSpec

FD_FILE = "fd_digits.json"


def sample_grid_callback(denoiser, caps: ModelCaps, info: DatasetInfo, config: ml_collections.ConfigDict,
                         workdir: pathlib.Path):
    """Writes ``samples/step_XXXXXX.png`` from the EMA params with ``config.sample.sampler``
    (one row per class; a video model: one video per row, under the sampler's plan, whose
    given frames come from the first held-out videos)."""
    classes = caps.null_label
    spec = SamplerSpec.parse(config.sample.sampler)
    truth = None
    if info.num_frames is not None:
        from orchestration.generation.scoring import VIDEO_TRUTH_SPLIT
        from orchestration.generation.video import needs_truth, truth_videos, video_length

        if needs_truth(spec, info.num_frames):  # read once, before training starts
            truth = truth_videos(config, VIDEO_TRUTH_SPLIT, config.sample.num, video_length(spec, info.num_frames))

    def fn(step: int, state: TrainState):
        path = workdir / "samples" / f"step_{step:06d}.png"
        kwargs = dict(batch_size=config.sample.num, seed=config.seed, labels=class_labels(config.sample.num, classes),
                      external=external_for(workdir, spec))
        if info.num_frames is None:
            images = generate(denoiser, state.ema_params, info.image_shape, config.sample.num, spec, caps, **kwargs)
            if jax.process_index() == 0:  # labels cycle 0..9, so column j shows class j
                save_grid(images, path, nrow=classes or None, scale=max(1, 32 // info.image_shape[0]))
            return None
        from orchestration.generation.video import generate_video

        videos = generate_video(denoiser, state.ema_params, (info.num_frames, *info.image_shape), config.sample.num,
                                spec, caps, truth=truth, **kwargs)
        if jax.process_index() == 0:  # a filmstrip: one video per row
            save_grid(videos.reshape(-1, *videos.shape[2:]), path, nrow=videos.shape[1],
                      scale=max(1, 32 // info.image_shape[0]))
        return None

    return fn


def fd_digits_eval(denoiser, caps: ModelCaps, params, info: DatasetInfo, config: ml_collections.ConfigDict,
                   workdir: pathlib.Path) -> dict:
    """FD-digits (and class accuracy) of ``config.eval.num_samples`` samples of ``config.eval.sampler``."""
    from diffusion.metrics.fd_digits import fd_digits

    labels = class_labels(config.eval.num_samples, caps.null_label)
    spec = SamplerSpec.parse(config.eval.sampler)
    t0 = time.perf_counter()
    images = generate(denoiser, params, info.image_shape, config.eval.num_samples, spec, caps,
                      batch_size=config.eval.batch_size, seed=config.seed + 1, labels=labels,
                      external=external_for(workdir, spec))
    sample_s = time.perf_counter() - t0
    result = fd_digits(images, labels)
    result.update(sampler=spec.to_string(), sample_seconds=sample_s)
    return result


def final_fd_callback(denoiser, caps: ModelCaps, info: DatasetInfo, config: ml_collections.ConfigDict,
                      workdir: pathlib.Path):
    """At the end: FD-digits of the EMA params, written to ``<workdir>/fd_digits.json``."""

    def fn(step: int, state: TrainState):
        result = {"step": step, **fd_digits_eval(denoiser, caps, state.ema_params, info, config, workdir)}
        if jax.process_index() == 0:
            files.write_text(workdir / FD_FILE, json.dumps(result, indent=2) + "\n")
            print(f"FD-digits at step {step}: {result['fd_digits']:.3f}"
                  + (f", class accuracy {result['class_accuracy']:.3f}" if "class_accuracy" in result else "")
                  + f" ({result['num']} samples, {result['sampler']})", flush=True)
        return {k: result[k] for k in ("fd_digits", "class_accuracy") if k in result}

    return fn
