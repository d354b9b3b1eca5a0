"""The training loop shared by diffusion training and every distiller.

It owns the step loop, progress bar, logging, periodic and final callbacks,
checkpointing, the non-finite guard and preemption (SIGTERM / Ctrl-C: save, then stop).
It knows no method: the jitted step, the data iterator and callbacks come from outside.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import tqdm

from diffusion.train import checkpoint
from diffusion.train.state import TrainState
from diffusion.train.writer import MetricWriter


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite updates; no checkpoint of this state was written."""


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (a full disk, a vanished directory)."""


class Preempted(Exception):
    """Raised after a SIGTERM / SIGINT save; ``signum`` says which."""

    def __init__(self, step: int, signum: int, saved: bool = True, newest: int | None = None):
        what = ("a checkpoint was saved" if saved else "no checkpoint was saved: the run was in a streak of "
                f"non-finite updates; the newest checkpoint is {_step_name(newest)}")
        super().__init__(f"stopped by signal {signum} at step {step}; {what}; re-run the same command to resume")
        self.step, self.signum = step, signum


def _step_name(step: int | None) -> str:
    return "none yet" if step is None else f"step {step}"


@dataclasses.dataclass
class Callback:
    """``fn(step, state) -> metrics dict or None``, run every ``every`` steps (0: never)
    and, if ``at_end``, once after the last step."""

    fn: Callable[[int, TrainState], dict | None]
    every: int = 0
    at_end: bool = True


class _SignalFlag:
    """Records SIGTERM / SIGINT instead of dying, so the loop can save first."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handler
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _any_process(signum: int | None) -> int | None:
    """A signal any process received (every process gets the same answer at the same step:
    one small all-gather per step when there are several), else None."""
    if jax.process_count() == 1:
        return signum
    from jax.experimental import multihost_utils

    got = [int(s) for s in np.ravel(multihost_utils.process_allgather(np.int32(signum or 0))) if s]
    return got[0] if got else None


@dataclasses.dataclass
class LoopSettings:
    num_steps: int
    log_every: int = 100
    ckpt_every: int = 1000
    max_consecutive_nonfinite: int = 20
    progress: bool = True


def _check_finite(state: TrainState, limit: int, newest: int | None) -> None:
    consecutive = int(jax.device_get(state.consecutive_skipped))
    if consecutive >= limit:
        raise NonFiniteError(
            f"{consecutive} consecutive non-finite updates (loss or gradients NaN/Inf) at step "
            f"{int(jax.device_get(state.step))}; stopping without saving this state. Check the data for "
            "NaNs, lower train.lr, or tighten train.grad_clip. The newest checkpoint is "
            f"{_step_name(newest)}, written before this streak began (none is saved during one).")


def _reason(e: Exception) -> str:
    """The operating system's reason in an orbax / tensorstore write error (which first
    names every path involved), else the error's first line."""
    text = str(e).strip()
    os_error = re.search(r":\s*([^:\n]+?)\s*\[os_error_code='?(\d+)", text)
    if os_error:
        return f"{os_error.group(1)}, errno {os_error.group(2)}"
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


class _Saver:
    """Starts checkpoint saves and turns a failed write into one clear error.

    ``newest`` is the newest step whose save was started (the last may still be in
    flight); a save is skipped while the state is in a streak of non-finite updates.
    A save waits for the previous one, so once it returns that one is committed:
    ``on_commit(step)`` records it (``metrics.jsonl`` rows ``{"step": S, "checkpoint": S}``,
    which tell a later run that checkpoints existed)."""

    def __init__(self, manager, config_dict: dict, data_iter: Any, settings: LoopSettings, bar,
                 on_commit: Callable[[int], None]):
        self.manager, self.config_dict, self.data_iter, self.settings, self.bar = (
            manager, config_dict, data_iter, settings, bar)
        self.on_commit = on_commit
        self.newest, self.pending = manager.latest_step(), None

    def _guarded(self, fn, step: int):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - orbax re-raises its writer threads' errors here
            failed = self.pending if self.pending is not None else step
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {failed} in {self.manager.directory} ({_reason(e)}). "
                "Free disk space or fix the directory, then re-run the same command: it resumes from the newest "
                "complete checkpoint.") from None

    def check_finite(self, state: TrainState) -> None:
        _check_finite(state, self.settings.max_consecutive_nonfinite, self.newest)

    def save(self, step: int, state: TrainState, force: bool = False) -> bool:
        self.check_finite(state)
        streak = int(jax.device_get(state.consecutive_skipped))
        if streak:
            self.bar.write(f"not saving step {step}: its last {streak} update(s) were non-finite; the newest "
                           f"checkpoint is {_step_name(self.newest)}", file=sys.stderr)
            return False
        self.wait(step)  # orbax would wait for the previous save anyway; its bytes must be on disk
        self._check_space(step, state)
        self._guarded(lambda: checkpoint.save(self.manager, step, state, self.config_dict, self.data_iter,
                                              force=force), step)
        self.newest = self.pending = step
        return True

    def _check_space(self, step: int, state: TrainState) -> None:
        """Refuses a save that cannot fit before orbax starts writing (a half-written
        save fails late, in writer threads, after more steps were trained)."""
        needed = checkpoint.size_estimate(state)
        free = shutil.disk_usage(str(self.manager.directory)).free
        if free < needed:
            raise CheckpointWriteError(
                f"not enough disk space for the checkpoint of step {step} in {self.manager.directory}: it needs "
                f"about {needed / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free. Free disk space, then re-run "
                f"the same command: it resumes from the newest checkpoint ({_step_name(self.newest)}).")

    def wait(self, step: int) -> None:
        self._guarded(self.manager.wait_until_finished, step)
        if self.pending is not None:
            self.on_commit(self.pending)
        self.pending = None


def run(state: TrainState, train_step: Callable, data_iter: Any, make_batch: Callable[[Any], Any],
        manager, config_dict: dict, settings: LoopSettings, writer: MetricWriter,
        callbacks: Sequence[Callback] = ()) -> TrainState:
    """Trains from ``state.step`` up to ``settings.num_steps``.

    Args:
      state: the (restored or fresh) train state, already sharded.
      train_step: jitted ``(state, batch) -> (state, metrics)`` (state donated).
      data_iter: checkpointable iterator of per-process batches.
      make_batch: per-process batch -> global (sharded) batch.
      manager: orbax ``CheckpointManager``.
      config_dict: the resolved config, saved with every checkpoint.
      settings: loop lengths and intervals.
      writer: metric writer.
      callbacks: periodic / final hooks (sample grids, evaluation).

    Checkpoints are written only when the last update was finite: during a streak of
    non-finite updates the unchanged params are the ones that produced it.

    Raises:
      Preempted: when SIGTERM / SIGINT arrived, after saving (unless in a non-finite streak).
      NonFiniteError: too many consecutive non-finite updates (nothing saved).
      CheckpointWriteError: a checkpoint could not be written (e.g. the disk is full).
    """
    step = int(jax.device_get(state.step))
    bar = tqdm.tqdm(total=settings.num_steps, initial=step, disable=not settings.progress or jax.process_index(),
                    dynamic_ncols=True, desc="train")
    saver = _Saver(manager, config_dict, data_iter, settings, bar,
                   on_commit=lambda s: writer.write(s, {"checkpoint": s}, tensorboard=False))
    window, t_last = [], time.perf_counter()
    try:
        with _SignalFlag() as flag:
            while step < settings.num_steps:
                state, metrics = train_step(state, make_batch(next(data_iter)))
                step += 1
                window.append(metrics)
                bar.update(1)
                if step % settings.log_every == 0 or step == settings.num_steps:
                    fetched = jax.device_get(window)
                    now = time.perf_counter()
                    logged = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                    logged.update(steps_per_sec=len(window) / (now - t_last),
                                  skipped=float(jax.device_get(state.skipped)))
                    writer.write(step, logged)
                    bar.set_postfix(loss=f"{logged['loss']:.4f}", steps_s=f"{logged['steps_per_sec']:.2f}")
                    window, t_last = [], now
                    saver.check_finite(state)
                signum = _any_process(flag.signum)  # one process's SIGTERM is every process's, at this step
                if signum is not None:
                    saved = saver.save(step, state, force=True)
                    saver.wait(step)
                    raise Preempted(step, signum, saved, saver.newest)
                if step % settings.ckpt_every == 0 or step == settings.num_steps:
                    saver.save(step, state)
                for cb in callbacks:
                    if (cb.every and step % cb.every == 0) or (cb.at_end and step == settings.num_steps):
                        t_cb = time.perf_counter()
                        out = cb.fn(step, state)
                        if out:
                            writer.write(step, out)
                        t_last += time.perf_counter() - t_cb  # keep callbacks out of steps/s
        saver.wait(step)
    finally:
        bar.close()  # before an error's message, so it is not glued to the bar
    return state
