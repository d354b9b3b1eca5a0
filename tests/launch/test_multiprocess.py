"""Several processes on this machine (2 x 4 fake CPU devices, a coordinator on localhost):
``launch.train`` gives the 1 x 8 loss curve, only process 0 writes, checkpoints move
between process counts and mesh shapes, one process's SIGTERM stops every process at the
same step, and a dead process makes the others exit (docs/design/scale_out.md)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from diffusion.train import checkpoint
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _train(workdir, *overrides) -> list[str]:
    return [sys.executable, "-m", "launch.train", "--config", "configs/digits.py:smoke", "--workdir", str(workdir),
            "--config.eval.fd_digits=False", *overrides]


def start_processes(workdir, count: int, *overrides) -> list[subprocess.Popen]:
    """``launch.train`` as ``count`` processes of ``8 / count`` devices each."""
    port = _free_port()
    return [subprocess.Popen(_train(workdir, *overrides, "--multihost", f"--coordinator=localhost:{port}",
                                    f"--num_processes={count}", f"--process_id={i}", "--distributed_timeout=60"),
                             cwd=ROOT, env=_env(8 // count), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)]


def finish(procs, returncode: int = 0, timeout: int = 400) -> list[str]:
    """Each process's stderr, once all exited with ``returncode``."""
    errs = [p.communicate(timeout=timeout)[1] for p in procs]
    for i, (p, err) in enumerate(zip(procs, errs)):
        assert p.returncode == returncode, f"process {i}: {err[-3000:]}"
    return errs


def losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_processes_equal_one_sync_a_preemption_and_checkpoints_move_between_counts(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    finish(start_processes(two, 2))  # not beside another run: a starved process misses gloo's 30 s rendezvous
    single = subprocess.run(_train(one), cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = losses(two), losses(one)
    assert sorted(a) == [5, 10, 15, 20]
    assert a == b  # bitwise: the same global batches, program and reduction over the same 8 devices
    # process 0 alone wrote the logs and grids: one metrics line per step, no per-process files
    assert len((two / "metrics.jsonl").read_text().splitlines()) == len((one / "metrics.jsonl").read_text().splitlines())
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    # the 2-process checkpoint resumes in 1 process on a (4, 2) mesh ...
    later = ["--config.train.sample_every=0", "--config.train.log_every=2"]
    resumed = subprocess.run(_train(two, "--config.train.num_steps=30", "--config.mesh.fsdp=2", *later), cwd=ROOT,
                             env=_env(8), capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    # ... and the 1-process one in 2 processes, until a SIGTERM to process 1 alone stops both at one step
    procs = start_processes(one, 2, "--config.train.num_steps=100000", "--config.train.ckpt_every=100000", *later)
    deadline = time.time() + 300
    while max(losses(one)) < 26:
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "the resumed run did not get going"
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    errs = finish(procs, 128 + signal.SIGTERM, timeout=120)
    assert all("re-run the same command to resume" in e for e in errs)
    manager = checkpoint.reader(one)
    stopped = manager.latest_step()
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    saved = checkpoint.restore_subtree(manager, stopped, {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=one_device)})
    manager.close()
    assert stopped >= 26 and int(saved["step"]) == stopped  # saved on the signal (ckpt_every is 100000)
    a, b = losses(two), losses(one)
    common = [s for s in range(22, 31, 2) if s in b]  # logged by both continuations (b stopped on the signal)
    assert common[:3] == [22, 24, 26] and [a[s] for s in common] == [b[s] for s in common]  # bitwise (measured)


def test_a_dead_process_makes_the_others_exit_instead_of_hanging():
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "tests.launch.mp_die", str(i), port], cwd=ROOT, env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]  # a hang fails here
    assert procs[1].returncode == 3
    assert procs[0].returncode != 0, outs[0][-2000:]
    assert "process 0: JaxRuntimeError" in outs[0] and "Task 1 heartbeat timeout" in outs[0], outs[0][-3000:]


def test_explicit_settings_are_checked_before_connecting():
    from launch.distributed import initialize

    with pytest.raises(ValueError, match="go together"):
        initialize("localhost:1234", None, 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="0 <= --process_id < --num_processes"):
        initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="distributed_timeout must be >= 1"):
        initialize("localhost:1234", 2, 0, timeout_s=0)
