"""Runs a diffusion training experiment from a config in a work directory.

Used by ``python -m launch.train`` and by the tests (in-process, sharing compiled code).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from diffusion.train import checkpoint
from diffusion.train.loop import Callback, LoopSettings, run
from diffusion.train.objective import make_diffusion_loss
from diffusion.train.optim import make_optimizer
from diffusion.train.setup import abstract_state, init_state, jit_train_step, state_factory
from diffusion.train.sharding import global_batch, make_mesh
from diffusion.train.step import make_train_step
from diffusion.train.writer import MetricWriter
from diffusion.data.pipeline import make_train_iterator
from launch import callbacks as cbs
from launch.builders import build_denoiser, build_source, num_classes
from launch.workdir import prepare_workdir, to_json_dict


def make_optimizer_from(train: ml_collections.ConfigDict):
    return make_optimizer(train.lr, train.warmup_steps, train.num_steps, schedule=train.lr_schedule,
                          weight_decay=train.weight_decay, grad_clip=train.grad_clip)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, progress: bool = True,
          devices=None) -> dict:
    """Trains (or resumes) ``config`` in ``workdir``; returns the final evaluation (or {}).

    Raises:
      WorkdirMismatchError: ``workdir`` holds a run with an incompatible config.
      diffusion.train.loop.Preempted: stopped by SIGTERM / SIGINT after saving.
      diffusion.train.loop.NonFiniteError: the run kept producing NaN/Inf updates.
    """
    config_json = to_json_dict(config)
    workdir = prepare_workdir(workdir, config_json)
    source, info = build_source(config)
    denoiser = build_denoiser(config, info)
    classes = num_classes(denoiser)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    optimizer = make_optimizer_from(config.train)

    example = jnp.zeros((1, *info.image_shape), jnp.float32)
    example_cond = {"label": jnp.zeros((1,), jnp.int32)} if classes else {}
    module = denoiser.module

    def init_params(key):
        return module.init(key, example, jnp.zeros((1,)), **example_cond)["params"]

    make = state_factory(init_params, optimizer, jax.random.PRNGKey(config.seed))
    abstract, shardings = abstract_state(make, mesh)
    data_iter = make_train_iterator(source, config.train.batch_size, config.seed, random_flip=config.data.random_flip)
    manager = checkpoint.make_manager(workdir, config.train.keep_last, config.train.keep_every)
    latest = manager.latest_step()
    if latest is None:
        state = init_state(make, shardings, mesh)
    else:
        print(f"resuming {workdir} from step {latest}", flush=True)
        state = checkpoint.restore(manager, latest, abstract, data_iter)

    loss_fn = make_diffusion_loss(denoiser, config.diffusion.weighting, config.diffusion.cond_drop_prob, classes)
    step_fn = jit_train_step(make_train_step(loss_fn, optimizer, config.train.ema_decay), shardings, mesh)
    callbacks = [Callback(cbs.sample_grid_callback(denoiser, info, config, workdir), every=config.train.sample_every)]
    wants_fd = config.eval.fd_digits and config.data.name == "digits"
    if wants_fd:
        callbacks.append(Callback(cbs.final_fd_callback(denoiser, info, config, workdir), at_end=True))
    settings = LoopSettings(config.train.num_steps, config.train.log_every, config.train.ckpt_every,
                            config.train.max_consecutive_nonfinite, progress)
    writer = MetricWriter(workdir)
    try:
        if latest is not None and latest >= config.train.num_steps:
            print(f"{workdir} is already trained to step {latest} (train.num_steps={config.train.num_steps}); "
                  "raise --config.train.num_steps to train longer", flush=True)
            fd_path = workdir / cbs.FD_FILE
            if wants_fd and not fd_path.exists():  # the run ended before its final evaluation
                callbacks[-1].fn(latest, state)
        else:
            with mesh:
                state = run(state, step_fn, data_iter, lambda b: global_batch(b, mesh), manager, config_json,
                            settings, writer, callbacks)
    finally:
        writer.close()
        manager.close()
    fd_path = workdir / cbs.FD_FILE
    return json.loads(fd_path.read_text()) if fd_path.exists() else {}
