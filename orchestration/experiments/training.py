"""Plain training of a config in a work directory (``python -m launch.train``): a diffusion
model (with a text or latent model's frozen parts) or a VAE, through the shared run."""

from __future__ import annotations

import pathlib

import jax
import ml_collections

from diffusion.train.objective import make_diffusion_loss
from diffusion.train.setup import state_factory
from orchestration.build.builders import build_denoiser, build_source, init_params, make_optimizer_from, model_caps
from orchestration.build.validation import validate_config
from orchestration.experiments.frozen_parts import with_frozen_parts
from orchestration.experiments.runner import Experiment, run_experiment
from orchestration.experiments.vae_training import vae_experiment


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, progress: bool = True,
          devices=None) -> dict:
    """Trains (or resumes) ``config`` in ``workdir``; returns the final evaluation (or {}).

    Raises:
      ValueError: a bad config (nothing is written).
      WorkdirMismatchError: ``workdir`` holds a run with an incompatible config.
      WorkdirBusyError: another process is training in ``workdir``.
      diffusion.train.loop.Preempted: stopped by SIGTERM / SIGINT after saving.
      diffusion.train.loop.NonFiniteError: the run kept producing NaN/Inf updates.
    """
    validate_config(config, "train")
    if config.model.kind == "vae":
        return run_experiment(config, workdir, vae_experiment(config), progress=progress, devices=devices)
    source, info = build_source(config)
    denoiser, caps = build_denoiser(config, info), model_caps(config, info)
    optimizer = make_optimizer_from(config.train)
    make = state_factory(lambda key: init_params(config, info, key), optimizer, jax.random.PRNGKey(config.seed))
    loss_fn = make_diffusion_loss(denoiser, config.diffusion.weighting, config.diffusion.cond_drop_prob,
                                  caps.null_label, float(config.diffusion.get("per_frame_prob", 0.0)),
                                  config.diffusion.get("per_frame_group", 2))
    exp = Experiment(denoiser, caps, source, info, optimizer, make, loss_fn)
    if caps.text or config.get("latent") is not None:
        exp = with_frozen_parts(exp, config, pathlib.Path(workdir))
    return run_experiment(config, workdir, exp, progress=progress, devices=devices)
