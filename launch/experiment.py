"""Runs a training experiment from a config in a work directory: plain diffusion
training here, distillation in ``launch.distill_experiment``; both through
:func:`run_experiment`.

Used by ``python -m launch.train`` and by the tests (in-process, sharing compiled code).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any, Callable

import jax
import ml_collections
import optax

from diffusion.train import checkpoint
from diffusion.train.loop import Callback, LoopSettings, run
from diffusion.train.memory import check_fits, device_capacity, state_memory
from diffusion.train.objective import make_diffusion_loss
from diffusion.train.optim import make_optimizer
from diffusion.train.setup import abstract_state, init_state, jit_train_step, state_factory
from diffusion.train.sharding import global_batch, make_mesh
from diffusion.train.step import make_train_step
from diffusion.train.writer import MetricWriter, read_metrics
from diffusion.data import DatasetInfo
from diffusion.data.pipeline import make_train_iterator
from launch import callbacks as cbs
from launch.builders import build_denoiser, build_source, init_params, model_caps
from launch.phast_files import external_for
from launch.validation import validate_config
from launch.workdir import check_workdir, lock, to_json_dict, write_config
from sampling.spec import SamplerSpec


def make_optimizer_from(train: ml_collections.ConfigDict, round_steps: int = 0):
    return make_optimizer(train.lr, train.warmup_steps, train.num_steps, schedule=train.lr_schedule,
                          weight_decay=train.weight_decay, grad_clip=train.grad_clip, round_steps=round_steps)


@dataclasses.dataclass
class Experiment:
    """What differs between plain training and a distillation run; the rest is shared.

    Attributes:
      denoiser: the trained network's denoiser (sample grids and the final FD use it).
      caps: what that model can do (``sampling.registry.ModelCaps``, from the config).
      source, info: the training data and its description.
      optimizer: the optax optimizer.
      make: ``(*make_args) -> TrainState``, the fresh state (run under ``jit``).
      make_args: arrays ``make`` takes as arguments (e.g. teacher params).
      loss_fn: the method's loss (``diffusion.train.step.LossFn``).
      after_update: the method's ``(state, carry) -> state`` after each step, or None.
      transforms: per-example grain maps of the input pipeline (caption dropout, tokens).
      preprocess: global batch -> the batch the loss sees (frozen text encoder, VAE), or None.
      callbacks: ``(config, workdir) -> [Callback]`` replacing the sample grids and the
        final FD (a VAE's reconstructions), or None.
      before_training: ``workdir -> None``, run under the lock before the first write of
        a run's files (components of a text-to-image run), or None.
      to_network: trained params -> network params (LoRA's merge, :func:`with_lora`), or None.
    """

    denoiser: Any
    caps: Any
    source: Any
    info: DatasetInfo
    optimizer: optax.GradientTransformation
    make: Callable[..., Any]
    loss_fn: Callable
    make_args: tuple = ()
    after_update: Callable | None = None
    transforms: tuple = ()
    preprocess: Callable | None = None
    callbacks: Callable | None = None
    before_training: Callable | None = None
    to_network: Callable | None = None


def with_lora(exp: Experiment, config: ml_collections.ConfigDict) -> Experiment:
    """``exp`` training rank-``train.lora_rank`` adapters on the attention projections
    instead of every parameter (``diffusion/train/lora.py``, docs/design/pso.md); the
    state's EMA and a method's ``after_update`` see the merged network params."""
    from diffusion.train import lora

    rank = int(config.train.lora_rank)
    alpha = float(config.train.lora_alpha if config.train.lora_alpha is not None else rank)
    optimizer = lora.optimizer(exp.optimizer)

    def make(*args):
        state = exp.make(*args)
        tree = lora.init(state.params, rank, jax.random.fold_in(jax.random.PRNGKey(config.seed), 7))
        return state.replace(params=tree, opt_state=optimizer.init(tree))

    jax.eval_shape(make, *exp.make_args)  # a rank the network cannot take fails now, before anything is written
    return dataclasses.replace(exp, optimizer=optimizer, make=make, to_network=lambda t: lora.merge(t, alpha))


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
        from launch.vae_experiment import vae_experiment

        return run_experiment(config, workdir, vae_experiment(config), progress=progress, devices=devices)
    source, info = build_source(config)
    denoiser, caps = build_denoiser(config, info), model_caps(config, info)
    optimizer = make_optimizer_from(config.train)
    make = state_factory(lambda key: init_params(config, info, key), optimizer, jax.random.PRNGKey(config.seed))
    loss_fn = make_diffusion_loss(denoiser, config.diffusion.weighting, config.diffusion.cond_drop_prob,
                                  caps.null_label, float(config.diffusion.get("per_frame_prob", 0.0)))
    exp = Experiment(denoiser, caps, source, info, optimizer, make, loss_fn)
    if caps.text or config.get("latent") is not None:
        from launch.conditioning import with_frozen_parts

        exp = with_frozen_parts(exp, config, pathlib.Path(workdir))
    return run_experiment(config, workdir, exp, progress=progress, devices=devices)


def check_batch_splits(batch_size: int, devices: int) -> None:
    """The global batch must split evenly over the mesh's devices."""
    if batch_size % devices:
        raise ValueError(f"config.train.batch_size={batch_size} does not split over the {devices} devices of the mesh; "
                         f"use a multiple of {devices}")


def check_buildable(config: ml_collections.ConfigDict, exp: Experiment, mesh, workdir: pathlib.Path) -> None:
    """What can only fail once built, built before anything is written: the global batch
    on the mesh, the train state's memory per device (printed; where the backend reports
    the device's memory, with the step's activations with and without remat, and refused
    when it cannot fit), and both sampler specs against the model."""
    devices = mesh.devices.size
    check_batch_splits(config.train.batch_size, devices)
    capacity = device_capacity()
    activations = None
    if capacity is not None and exp.denoiser is not None:  # an accelerator: the fit check counts activations too
        from launch.memory import activation_estimate

        configured = config.model.get("remat", "off")
        activations = activation_estimate(config, exp.info, config.train.batch_size // devices,
                                          [configured, "nothing_saveable" if configured == "off" else "off"])
    memory = state_memory(abstract_state(exp.make, mesh, *exp.make_args)[0], activations)
    if jax.process_index() == 0:
        print(memory.describe(capacity), flush=True)
    check_fits(memory, capacity)
    if exp.denoiser is None:  # not a diffusion model (a VAE): no sampler
        return
    for section in ("sample", "eval"):
        try:
            spec = SamplerSpec.parse(config[section].sampler)
            spec.build(exp.denoiser, exp.caps, external_for(workdir, spec))
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"config.{section}.sampler={config[section].sampler!r}: {e}") from None


def lost_checkpoints(workdir: pathlib.Path) -> str | None:
    """A message when ``metrics.jsonl`` records a committed checkpoint but none is left
    (deleted or moved); None when starting over is right (a run stopped before its first
    checkpoint committed: that is said, not silent)."""
    records = read_metrics(workdir)
    committed = [r["step"] for r in records if "checkpoint" in r]
    if committed:
        return (f"{workdir} has no checkpoint, but its metrics.jsonl records that checkpoints were written (the "
                f"newest at step {max(committed)}): they were deleted or moved. Nothing is overwritten: restore "
                "checkpoints/, or train in a new --workdir")
    logged = [r["step"] for r in records if "loss" in r]
    if logged:
        print(f"{workdir}: the last run logged up to step {max(logged)} but no checkpoint of it was committed; "
              "starting over from step 0", file=sys.stderr, flush=True)
    return None


def run_experiment(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, exp: Experiment, *,
                   progress: bool = True, devices=None) -> dict:
    """The shared run: checks that write nothing, then under the work directory's lock the
    config, the fresh or restored state (the newest undamaged checkpoint), the jitted step,
    callbacks, the loop, and the final FD-digits (digits data)."""
    config_json = to_json_dict(config)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    workdir = pathlib.Path(workdir)
    if config.train.get("lora_rank"):
        exp = with_lora(exp, config)
    check_buildable(config, exp, mesh, workdir)
    check_workdir(workdir, config_json)
    with lock(workdir):
        check_workdir(workdir, config_json)  # again, now that no other writer can change it
        reader = checkpoint.reader(workdir)
        lost = None if reader.all_steps() else lost_checkpoints(workdir)
        reader.close()
        if lost:
            raise FileNotFoundError(lost)
        write_config(workdir, config_json)  # first: a directory with files but no config.json is refused later
        if exp.before_training is not None:
            exp.before_training(workdir)
        return _run_locked(config, config_json, workdir, exp, mesh, progress)


def _run_locked(config, config_json: dict, workdir: pathlib.Path, exp: Experiment, mesh, progress: bool) -> dict:
    abstract, shardings = abstract_state(exp.make, mesh, *exp.make_args)
    data_iter = make_train_iterator(exp.source, config.train.batch_size, config.seed,
                                    random_flip=config.data.random_flip, transforms=exp.transforms)
    open_manager = lambda: checkpoint.make_manager(workdir, config.train.keep_last, config.train.keep_every)  # noqa: E731
    manager, state, latest = checkpoint.restore_newest_good(
        workdir, open_manager, abstract, data_iter, lambda text: print(text, file=sys.stderr, flush=True))
    if state is None:
        state = init_state(exp.make, shardings, mesh, *exp.make_args)
    else:
        print(f"resuming {workdir} from step {latest}", flush=True)

    train_step = make_train_step(exp.loss_fn, exp.optimizer, config.train.ema_decay, after_update=exp.after_update,
                                 to_network=exp.to_network)
    step_fn = jit_train_step(train_step, shardings, mesh)
    den, caps, info = exp.denoiser, exp.caps, exp.info
    wants_fd = config.eval.fd_digits and config.data.name == "digits" and exp.callbacks is None
    if exp.callbacks is not None:
        callbacks = exp.callbacks(config, workdir)
    else:
        callbacks = [Callback(cbs.sample_grid_callback(den, caps, info, config, workdir),
                              every=config.train.sample_every)]
    if wants_fd:
        callbacks.append(Callback(cbs.final_fd_callback(den, caps, info, config, workdir), at_end=True))
    settings = LoopSettings(config.train.num_steps, config.train.log_every, config.train.ckpt_every,
                            config.train.max_consecutive_nonfinite, progress)
    writer = MetricWriter(workdir, resume_step=latest or 0)
    try:
        if latest is not None and latest >= config.train.num_steps:
            print(f"{workdir} is already trained to step {latest} (train.num_steps={config.train.num_steps}); "
                  "raise --config.train.num_steps to train longer", flush=True)
            fd_path = workdir / cbs.FD_FILE
            if wants_fd and not fd_path.exists():  # the run ended before its final evaluation
                callbacks[-1].fn(latest, state)
        else:
            with mesh:
                prep = exp.preprocess or (lambda b: b)
                state = run(state, step_fn, data_iter, lambda b: prep(global_batch(b, mesh)), manager, config_json,
                            settings, writer, callbacks)
    finally:
        writer.close()
        manager.close()
    fd_path = workdir / cbs.FD_FILE
    return json.loads(fd_path.read_text()) if fd_path.exists() else {}
