"""Plain training of a config in a work directory (``python -m launch.train``): a diffusion
model (with a text or latent model's frozen parts) or a VAE, through the shared run."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import ml_collections

from diffusion.train.objective import make_diffusion_loss
from diffusion.train.setup import state_factory
from diffusion.train.state import create_train_state
from orchestration.build.builders import build_denoiser, build_source, init_params, make_optimizer_from, model_caps
from orchestration.build.validation import validate_config
from orchestration.experiments.frozen_parts import with_frozen_parts
from orchestration.experiments.init_from import base_run, base_step, finetune_config, record_base, start_from
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
    config, base = finetune_config(config, workdir)
    validate_config(config, "train")
    if config.model.kind == "vae":
        return run_experiment(config, workdir, vae_experiment(config), progress=progress, devices=devices)
    source, info = build_source(config)
    denoiser, caps = build_denoiser(config, info), model_caps(config, info)
    optimizer = make_optimizer_from(config.train)
    loss_fn = make_diffusion_loss(denoiser, config.diffusion.weighting, config.diffusion.cond_drop_prob,
                                  caps.null_label, float(config.diffusion.get("per_frame_prob", 0.0)),
                                  config.diffusion.get("per_frame_group", 2))
    if config.get("init_from"):
        exp = _from_base(config, workdir, base, denoiser, caps, source, info, optimizer, loss_fn)
    else:
        make = state_factory(lambda key: init_params(config, info, key), optimizer, jax.random.PRNGKey(config.seed))
        exp = Experiment(denoiser, caps, source, info, optimizer, make, loss_fn)
        if caps.text or config.get("latent") is not None:
            exp = with_frozen_parts(exp, config, pathlib.Path(workdir))
    return run_experiment(config, workdir, exp, progress=progress, devices=devices)


def _from_base(config, workdir, base, denoiser, caps, source, info, optimizer, loss_fn) -> Experiment:
    """The experiment of a run started from ``config.init_from`` (``init_from.py``): the state
    made from the base's params (read only for a fresh state), the base's components."""
    rng = jax.random.PRNGKey(config.seed)
    fresh = lambda: init_params(config, info, jax.random.fold_in(rng, 0))  # noqa: E731
    where = f"config.init_from={config.init_from!r}"

    def make(base_params):
        return create_train_state(start_from(fresh(), base_params, where), optimizer, jax.random.fold_in(rng, 1))

    def read(run) -> tuple:
        step = base_step(run, workdir)
        try:
            params = run.params(step)
        except ValueError as e:  # checkpoint.DamagedCheckpoint, or params of another network
            raise ValueError(f"{where}: its checkpoint at step {step} cannot be started from: {e}") from None
        jax.eval_shape(make, params)  # params that do not fit the network fail here
        return (params,)

    # a first start reads the base before anything is written (a damaged checkpoint is refused
    # then); a resumed run reads it only if it must start over
    first = read(base) if base is not None else None
    shapes = jax.eval_shape(fresh)
    exp = Experiment(denoiser, caps, source, info, optimizer, make, loss_fn, make_args=(shapes,),
                     fresh_args=(lambda: first) if first is not None else (lambda: read(base_run(config))))
    hooks = [record_base(config, base)]
    if caps.text or config.get("latent") is not None:
        exp = with_frozen_parts(exp, config, pathlib.Path(workdir), components_from=pathlib.Path(config.init_from))
        hooks.insert(0, exp.before_training)
    return dataclasses.replace(exp, before_training=lambda w: [hook(w) for hook in hooks])
