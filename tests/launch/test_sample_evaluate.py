"""launch.sample and launch.evaluate on a smoke-trained work directory."""

import json
import subprocess
import sys

import numpy as np
import pytest

from configs import digits
from launch.evaluate import run_cells, write_report
from launch.experiment import train
from launch.run_loader import load_run
from launch.sweep import parse_sweep
from tests.conftest import ROOT
from tests.launch.test_cli import _env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    import jax

    wd = tmp_path_factory.mktemp("trained") / "run"
    c = digits.get_config("smoke")
    c.train.sample_every = 0
    c.eval.fd_digits = False
    train(c, wd, progress=False, devices=jax.devices()[:1])
    return wd


def test_sample_cli_writes_npz_and_grid(workdir):
    cmd = [sys.executable, "-m", "launch.sample", "--workdir", str(workdir), "--solver", "dpmpp2m", "--steps", "4",
           "--num", "30", "--guidance", "2.0", "--time_shift=10,300", "--seed", "3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = workdir / "samples" / "dpmpp2m_4steps_w2_ts10-300_ckpt20_seed3"
    data = np.load(base.with_suffix(".npz"))
    assert data["images"].shape == (30, 8, 8, 1) and data["images"].dtype == np.uint8
    np.testing.assert_array_equal(data["labels"], np.arange(30) % 10)
    settings = json.loads(str(data["settings"]))
    assert settings["sampler"] == "solver=dpmpp2m;steps=4;grid=trailing;guidance=2;time_shift=10:300"
    assert settings["guidance"] == "2" and settings["time_shift"] == "10:300" and settings["ckpt"] == 20
    assert base.with_suffix(".png").exists()


def test_phast_then_sample_with_reuse_and_caching(workdir):
    phast = [sys.executable, "-m", "launch.phast", "--workdir", str(workdir), "--solver", "ddim", "--steps", "4",
             "--k", "2", "--num", "8", "--max_evals", "3"]
    proc = subprocess.run(phast, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((workdir / "phast" / "ddim_4steps_reuse2.json").read_text())
    assert found["num_steps"] == 4 and len(found["reuse_steps"]) == 2 and found["evaluations"] == 3
    assert found["psnr_db"] >= found["hurry_psnr_db"]
    again = subprocess.run(phast, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr  # nothing overwritten silently
    cmd = [sys.executable, "-m", "launch.sample", "--workdir", str(workdir), "--solver", "ddim", "--steps", "4",
           "--num", "20", "--attention_reuse", "phast:2", "--feature_cache", "uniform:2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(workdir / "samples" / "ddim_4steps_reuse-phast2_cache-uniform2-b0_ckpt20_seed0.npz")
    settings = json.loads(str(data["settings"]))
    assert settings["attention_reuse"] == "phast:2" and settings["feature_cache"] == "uniform:2"


@pytest.mark.parametrize("args,message", [
    (["--solver", "euler"], "unknown solver 'euler'; available: consistency, ddim, ddpm"),
    (["--ckpt", "7"], "no checkpoint at step(s) [7]"),
    (["--time_shift=80"], "WINDOW,CUTOFF"),
    (["--steps", "4", "--attention_reuse", "phast:3"], "no PHAST schedule at"),
    (["--steps", "4", "--feature_cache", "every:2"], "bad feature_cache 'every:2'"),
])
def test_sample_cli_bad_input(workdir, args, message):
    proc = subprocess.run([sys.executable, "-m", "launch.sample", "--workdir", str(workdir), "--num", "4", *args],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_records_cells_and_resumes(workdir, tmp_path):
    run = load_run(workdir)
    out = tmp_path / "eval"
    first = parse_sweep("solver=ddim;steps=2,3;time_shift=off")
    recs = run_cells(run, run.select("latest"), first, out, num=40, batch_size=40, progress=False)
    assert len(recs) == 2 and {r["steps"] for r in recs} == {2, 3}
    assert all(r["fd_digits"] > 0 and 0 <= r["class_accuracy"] <= 1 for r in recs)
    # "interrupted" after the first two cells: the full sweep only runs what is missing
    full = parse_sweep("solver=ddim,spndm;steps=2,3;time_shift=off,10:300")
    recs = run_cells(run, run.select("all"), full, out, num=40, batch_size=40, progress=False)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 2 * 8  # two checkpoints x eight cells, none twice
    before = (out / "report.json").read_text()
    run_cells(run, run.select("all"), full, out, num=40, batch_size=40, progress=False)
    assert (out / "report.json").read_text() == before  # nothing left to do
    write_report(recs, out, "test")
    md = (out / "report.md").read_text()
    assert "| spndm | time_shift 10:300 |" in md and "| ddim | off |" in md
    assert sorted(p.name for p in out.glob("*.png")) == ["fd_vs_steps_ckpt10.png", "fd_vs_steps_ckpt20.png"]


def test_evaluate_cli_and_its_errors(workdir):
    cmd = [sys.executable, "-m", "launch.evaluate", "--workdir", str(workdir), "--num", "20", "--batch_size", "20",
           "--sweep", "solver=ddim;steps=2;guidance=none,1.5"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((workdir / "eval" / "report.json").read_text())
    assert [r.get("guidance") for r in report["records"]] == [None, "1.5"]
    assert "evaluate" in report["command"] and "--sweep" in report["command"]
    bad = subprocess.run(cmd[:-1] + ["solver=heun;steps=2"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "unknown solver 'heun'" in bad.stderr
    missing = subprocess.run(cmd[:5] + ["--ckpts", "99"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "no checkpoint at step(s) [99]" in missing.stderr
