"""Training callbacks that ``launch/`` hands the loop: sample grids and the final FD-digits."""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections

from diffusion.data import DatasetInfo
from diffusion.metrics.grid import save_grid
from diffusion.nn.denoiser import Denoiser
from diffusion.train.state import TrainState
from launch.builders import num_classes
from launch.generate import SamplerSpec, class_labels, generate

FD_FILE = "fd_digits.json"


def sample_grid_callback(denoiser: Denoiser, info: DatasetInfo, config: ml_collections.ConfigDict,
                         workdir: pathlib.Path):
    """Writes ``samples/step_XXXXXX.png`` from the EMA params (one row per class)."""
    classes = num_classes(denoiser)

    def fn(step: int, state: TrainState):
        spec = SamplerSpec(config.sample.solver, config.sample.steps, config.sample.grid,
                           guidance=config.sample.get("guidance"))
        images = generate(denoiser, state.ema_params, info.image_shape, config.sample.num, spec,
                          batch_size=config.sample.num, seed=config.seed,
                          labels=class_labels(config.sample.num, classes), null_label=classes)
        if jax.process_index() == 0:  # labels cycle 0..9, so column j shows class j
            save_grid(images, workdir / "samples" / f"step_{step:06d}.png", nrow=classes or None,
                      scale=max(1, 32 // info.image_shape[0]))
        return None

    return fn


def fd_digits_eval(denoiser: Denoiser, params, info: DatasetInfo, config: ml_collections.ConfigDict) -> dict:
    """FD-digits (and class accuracy) of ``config.eval.num_samples`` samples."""
    from diffusion.metrics.fd_digits import fd_digits

    classes = num_classes(denoiser)
    labels = class_labels(config.eval.num_samples, classes)
    t0 = time.perf_counter()
    spec = SamplerSpec(config.eval.solver, config.eval.steps, config.eval.grid, guidance=config.eval.get("guidance"))
    images = generate(denoiser, params, info.image_shape, config.eval.num_samples, spec,
                      batch_size=config.eval.batch_size, seed=config.seed + 1, labels=labels, null_label=classes)
    sample_s = time.perf_counter() - t0
    result = fd_digits(images, labels)
    result.update(solver=config.eval.solver, steps=config.eval.steps, guidance=config.eval.get("guidance"),
                  sample_seconds=sample_s)
    return result


def final_fd_callback(denoiser: Denoiser, info: DatasetInfo, config: ml_collections.ConfigDict,
                      workdir: pathlib.Path):
    """At the end: FD-digits of the EMA params, written to ``<workdir>/fd_digits.json``."""

    def fn(step: int, state: TrainState):
        result = {"step": step, **fd_digits_eval(denoiser, state.ema_params, info, config)}
        if jax.process_index() == 0:
            (workdir / FD_FILE).write_text(json.dumps(result, indent=2) + "\n")
            print(f"FD-digits at step {step}: {result['fd_digits']:.3f}"
                  + (f", class accuracy {result['class_accuracy']:.3f}" if "class_accuracy" in result else "")
                  + f" ({result['num']} samples, {result['solver']} {result['steps']} steps)", flush=True)
        return {k: result[k] for k in ("fd_digits", "class_accuracy") if k in result}

    return fn
