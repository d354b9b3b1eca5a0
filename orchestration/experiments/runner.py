"""The shared run of every experiment (:func:`run_experiment`): what a method differs in
is an :class:`Experiment`; plain diffusion training (``training.py``), distillation
(``distillation.py``) and a VAE (``vae_training.py``) each build one. Checks that write
nothing come first, then under the work directory's lock: the config, the fresh or
restored state, the jitted step, callbacks and the loop.
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
from diffusion.train import lora
from diffusion.train.memory import check_fits, device_capacity, state_memory
from diffusion.train.setup import abstract_state, init_state, jit_train_step
from diffusion.train.sharding import global_batch, make_mesh
from diffusion.train.step import make_train_step
from diffusion.train.writer import MetricWriter, read_metrics
from diffusion.data import DatasetInfo
from diffusion.data.pipeline import make_train_iterator
from orchestration.experiments import callbacks as cbs
from orchestration.experiments.memory import activation_estimate, check_batch_splits
from orchestration.workdir.directory import check_workdir, lock, to_json_dict, write_config
from orchestration.workdir.phast_files import external_for
from sampling.spec import SamplerSpec


@dataclasses.dataclass
class Experiment:
    """What differs between plain training and a distillation run; the rest is shared.

    Attributes:
      denoiser: the trained network's denoiser (sample grids and the final FD use it).
      caps: what that model can do (``sampling.registry.ModelCaps``, from the config).
      source, info: the training data and its description.
      optimizer: the optax optimizer.
      make: ``(*make_args) -> TrainState``, the fresh state (run under ``jit``).
      make_args: arrays ``make`` takes as arguments (e.g. teacher params), or their shapes
        (``jax.ShapeDtypeStruct``) when ``fresh_args`` loads them.
      loss_fn: the method's loss (``diffusion.train.step.LossFn``).
      after_update: the method's ``(state, carry) -> state`` after each step, or None.
      transforms: per-example grain maps of the input pipeline (caption dropout, tokens).
      preprocess: global batch -> the batch the loss sees (frozen text encoder, VAE), or None.
      callbacks: ``(config, workdir) -> [Callback]`` replacing the sample grids and the
        final FD (a VAE's reconstructions), or None.
      before_training: ``workdir -> None``, run under the lock before the first write of
        a run's files (components of a text-to-image run), or None.
      to_network: trained params -> network params (LoRA's merge, :func:`with_lora`), or None.
      fresh_args: ``() -> make_args``, called only when a fresh state is made (a run started
        from another run's params needs them at step 0 only), or None: ``make_args``.
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
    fresh_args: Callable[[], tuple] | None = None


def with_lora(exp: Experiment, config: ml_collections.ConfigDict) -> Experiment:
    """``exp`` training rank-``train.lora_rank`` adapters on the attention projections
    instead of every parameter (``diffusion/train/lora.py``, docs/design/pso.md); the
    state's EMA and a method's ``after_update`` see the merged network params."""
    rank = int(config.train.lora_rank)
    alpha = float(config.train.lora_alpha if config.train.lora_alpha is not None else rank)
    optimizer = lora.optimizer(exp.optimizer)

    def make(*args):
        state = exp.make(*args)
        tree = lora.init(state.params, rank, jax.random.fold_in(jax.random.PRNGKey(config.seed), 7),
                         init_kind=config.train.get("lora_init", "normal"))
        return state.replace(params=tree, opt_state=optimizer.init(tree))

    jax.eval_shape(make, *exp.make_args)  # a rank the network cannot take fails now, before anything is written
    return dataclasses.replace(exp, optimizer=optimizer, make=make, to_network=lambda t: lora.merge(t, alpha))


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
                                    # cached encodings hold both orientations: their transform flips
                                    random_flip=config.data.random_flip and not config.data.get("cache_encodings"),
                                    transforms=exp.transforms)
    open_manager = lambda: checkpoint.make_manager(workdir, config.train.keep_last, config.train.keep_every)  # noqa: E731
    manager, state, latest = checkpoint.restore_newest_good(
        workdir, open_manager, abstract, data_iter, lambda text: print(text, file=sys.stderr, flush=True))
    if state is None:
        args = exp.make_args if exp.fresh_args is None else exp.fresh_args()
        state = init_state(exp.make, shardings, mesh, *args)
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
                              every=config.train.sample_every, at_end=config.train.sample_every > 0)]
    if wants_fd:
        callbacks.append(Callback(cbs.final_fd_callback(den, caps, info, config, workdir), at_end=True))
    settings = LoopSettings(config.train.num_steps, config.train.log_every, config.train.ckpt_every,
                            config.train.max_consecutive_nonfinite, progress)
    writer = MetricWriter(workdir, resume_step=latest or 0)
    if latest is not None and not any(r.get("checkpoint") == latest for r in read_metrics(workdir)):
        # committed, but the run that wrote it was killed before its metrics.jsonl row: the
        # record that tells a later run checkpoints existed (lost_checkpoints) must not miss it
        writer.write(latest, {"checkpoint": latest}, tensorboard=False)
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
