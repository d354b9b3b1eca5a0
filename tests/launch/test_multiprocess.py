"""Several processes on this machine (2 x 4 fake CPU devices, a coordinator on localhost):
``launch.train`` gives the 1 x 8 loss curve, only process 0 writes, and checkpoints move
between process counts and mesh shapes (docs/design/scale_out.md)."""

import json
import os
import socket
import subprocess
import sys

import pytest

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


def run_processes(workdir, count: int, *overrides, timeout: int = 400) -> list[subprocess.CompletedProcess]:
    """``launch.train`` as ``count`` processes of ``8 / count`` devices each."""
    port = _free_port()
    procs = [subprocess.Popen(_train(workdir, *overrides, "--multihost", f"--coordinator=localhost:{port}",
                                     f"--num_processes={count}", f"--process_id={i}", "--distributed_timeout=60"),
                              cwd=ROOT, env=_env(8 // count), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(count)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    for i, r in enumerate(out):
        assert r.returncode == 0, f"process {i}: {r.stderr[-3000:]}"
    return out


def losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_two_processes_equal_one_and_checkpoints_move_between_process_counts(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    run_processes(two, 2)
    single = subprocess.run(_train(one), cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = losses(two), losses(one)
    assert sorted(a) == sorted(b) == [5, 10, 15, 20]
    assert a == b  # bitwise: the same global batches, program and reduction over the same 8 devices
    # process 0 alone wrote the logs and grids: one metrics line per step, no per-process files
    assert len((two / "metrics.jsonl").read_text().splitlines()) == len((one / "metrics.jsonl").read_text().splitlines())
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    # the 2-process checkpoint resumes in 1 process on a (4, 2) mesh; the 1-process one in 2 processes
    longer = ["--config.train.num_steps=30", "--config.train.sample_every=0"]
    resumed = subprocess.run(_train(two, *longer, "--config.mesh.fsdp=2"), cwd=ROOT, env=_env(8),
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    run_processes(one, 2, *longer)
    a, b = losses(two), losses(one)
    assert sorted(a) == sorted(b) == [5, 10, 15, 20, 25, 30]
    assert a == b  # bitwise here too (measured; FSDP's gathers reorder nothing on this model)


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
