"""launch.sample and launch.evaluate on a smoke-trained work directory."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import digits
from orchestration.generation.evaluation import run_cells, write_report
from orchestration.experiments.training import train
from orchestration.build.run_loader import load_run
from orchestration.generation.sweep import parse_sweep
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
    base = workdir / "samples" / "dpmpp2m_4steps_w2_ts10-300_ckpt20_seed3_n30"
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
    data = np.load(workdir / "samples" / "ddim_4steps_reuse-phast2_cache-uniform2-db0_ckpt20_seed0_n20.npz")
    settings = json.loads(str(data["settings"]))
    assert settings["attention_reuse"] == "phast:2" and settings["feature_cache"] == "uniform:2"


def probe(module, *cases):
    """Runs ``module``'s command on each argument list in one process (tests/launch/cli_probe.py)."""
    proc = subprocess.run([sys.executable, "-m", "tests.launch.cli_probe", module, json.dumps(cases)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def assert_one_line_error(result, message):
    assert result["code"] == 2, result
    assert message in result["stderr"] and "Traceback" not in result["stderr"], result
    assert result["stderr"].startswith("error: "), result


SAMPLE_ERRORS = [
    (["--solver", "heun"], "unknown solver 'heun'; available: consistency, ddim, ddpm"),
    (["--ckpt", "7"], "no checkpoint at step(s) [7]"),
    (["--time_shift=80"], "WINDOW,CUTOFF"),
    (["--steps", "4", "--attention_reuse", "phast:3"], "no PHAST schedule at"),
    (["--steps", "4", "--feature_cache", "every:2"], "bad feature_cache 'every:2'"),
    (["--steps", "0"], "bad steps: 0 is out of range"),
    (["--guidance", "nan"], "bad guidance 'nan'"),
    (["--time_shift=5000,900"], "must lie in [0, T = 1000]"),
    (["--num", "-3"], "--num and --batch_size must be >= 1, got -3"),
    (["--num", "0"], "--num and --batch_size must be >= 1, got 0"),
    (["--solver", "dpmpp2m", "--eta", "0.5"], "eta applies to the ddim solver only, not 'dpmpp2m'"),
    (["--time_shift_mode", "destination"], "time_shift_mode is a knob of time_shift, which is off"),
    (["--feature_cache", "uniform:2", "--cache_branch", "9"], "cache_branch 9 does not exist"),
    (["--plan", "i2v"], "the i2v plan samples videos, and this model makes images"),
    (["--plan", "long"], "long needs a number: long:64"),
    (["--given_frames", "0"], "given_frames is a knob of plan, which is off"),
    (["--source", "heldout"], "--source names the split a video plan's given frames come from"),
]


def test_sample_cli_bad_input_is_one_line_and_writes_nothing(workdir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    unwritable = tmp_path / "unwritable"
    shutil.copytree(workdir, unwritable, ignore=shutil.ignore_patterns("samples", "eval", "phast"))
    (unwritable / "samples").write_text("a file where the samples directory goes")
    before = sorted(p.name for p in (workdir / "samples").iterdir()) if (workdir / "samples").exists() else []
    cases = [["--workdir", str(workdir), *args] for args, _ in SAMPLE_ERRORS]
    cases += [["--workdir", str(a_file)], ["--workdir", str(unwritable), "--steps", "2", "--num", "4"],
              ["--workdir", str(workdir), "--steps", "2", "--num", "4", "--seed", "9"],  # works,
              ["--workdir", str(workdir), "--steps", "2", "--num", "4", "--seed", "9"],  # then is not overwritten
              ["--workdir", str(workdir), "--steps", "2", "--num", "5", "--seed", "9"],  # another num: its own file
              ["--workdir", str(workdir), "--steps", "2", "--seed", "9"]]  # no --num: the run's config.sample.num
    results = probe("launch.sample", *cases)
    for result, (_, message) in zip(results, SAMPLE_ERRORS):
        assert_one_line_error(result, message)
    bad_dir, read_only, first, again, other, default_num = results[len(SAMPLE_ERRORS):]
    assert_one_line_error(bad_dir, f"{a_file} has no config.json")
    assert_one_line_error(read_only, f"cannot write the samples to {unwritable / 'samples'}")
    assert first["code"] == 0 and other["code"] == 0 and default_num["code"] == 0, (first, other, default_num)
    num = digits.get_config("smoke").sample.num
    assert_one_line_error(again, "ddim_2steps_ckpt20_seed9_n4.npz exists; pass --overwrite")
    made = sorted(set(p.name for p in (workdir / "samples").iterdir()) - set(before))
    assert made == sorted(f"ddim_2steps_ckpt20_seed9_n{n}.{ext}" for n in (4, 5, num) for ext in ("npz", "png"))
    assert len(np.load(workdir / "samples" / f"ddim_2steps_ckpt20_seed9_n{num}.npz")["images"]) == num


def test_evaluate_cli_bad_input_is_one_line(workdir, tmp_path):
    listed = tmp_path / "sweep.json"
    listed.write_text("[1, 2]")
    damaged = tmp_path / "damaged"
    shutil.copytree(workdir, damaged, ignore=shutil.ignore_patterns("samples", "phast"))
    (damaged / "eval").mkdir(exist_ok=True)
    (damaged / "eval" / "report.json").write_text("{ half a report")
    results = probe("launch.evaluate",
                    ["--workdir", str(workdir), "--sweep", str(listed)],
                    ["--workdir", str(damaged), "--sweep", "steps=2"],
                    ["--workdir", str(workdir), "--num", "0"],
                    ["--workdir", str(workdir), "--sweep", "steps=2;x0_clip=1"],
                    ["--workdir", str(workdir), "--sweep", ""],
                    ["--workdir", str(workdir), "--sweep", ";;"])
    assert_one_line_error(results[0], f"sweep file {listed} must hold an object")
    assert_one_line_error(results[1], f"{damaged / 'eval' / 'report.json'} is not a readable evaluation report")
    assert_one_line_error(results[2], "--num and --batch_size must be >= 1, got 0")
    assert_one_line_error(results[3], "unknown sweep key(s) ['x0_clip']")  # a toy part needs $KAIROS_PARTS
    for result in results[4:]:  # an empty sweep is refused, not run (or skipped) as the default one
        assert_one_line_error(result, "holds no key=v1,v2 entry")


def test_train_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
    wd, a_file = tmp_path / "never", tmp_path / "file"
    a_file.write_text("mine")
    smoke = ["--config", "configs/digits.py:smoke"]
    results = probe("launch.train",
                    ["--config", "configs/nope.py", "--workdir", str(wd)],
                    ["--config", "configs/digits.py:bogus", "--workdir", str(wd)],
                    [*smoke, "--workdir", str(wd), "--config.train.ckpt_every=0"],
                    [*smoke, "--workdir", str(wd), "--config.model.pred_type=vv"],
                    ["--config", "configs/digits_progressive.py:smoke", "--workdir", str(wd)],
                    [*smoke, "--workdir", str(a_file)])
    assert_one_line_error(results[0], "config file configs/nope.py does not exist")
    assert_one_line_error(results[1], "unknown variant 'bogus' of configs/digits.py")
    assert_one_line_error(results[2], "config.train.ckpt_every must be an integer >= 1, got 0")
    assert_one_line_error(results[3], "config.model.pred_type is 'vv'")
    assert_one_line_error(results[4], "run it with `python -m launch.distill`")
    assert_one_line_error(results[5], f"--workdir {a_file} is a file, not a directory")
    assert not wd.exists() and a_file.read_text() == "mine"


def test_a_toy_transform_file_works_from_launch_sample_and_a_sweep(workdir, tmp_path):
    """tests/sampling/toy_transform.py (one file) named in $KAIROS_PARTS: a new flag of
    launch.sample and a new sweep key of launch.evaluate, with no other edit."""
    shutil.copytree(workdir, tmp_path / "run", ignore=shutil.ignore_patterns("samples", "eval"))
    workdir = tmp_path / "run"
    env = {**_env(), "KAIROS_PARTS": "tests.sampling.toy_transform"}
    cmd = [sys.executable, "-m", "launch.sample", "--workdir", str(workdir), "--steps", "3", "--num", "10",
           "--x0_clip", "0.25"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(workdir / "samples" / "ddim_3steps_clip0.25_ckpt20_seed0_n10.npz")
    assert json.loads(str(data["settings"]))["x0_clip"] == "0.25"
    assert data["images"].min() >= 95 and data["images"].max() <= 160  # DDIM ends on the clipped x0: |x| <= 0.25
    cmd = [sys.executable, "-m", "launch.evaluate", "--workdir", str(workdir), "--num", "20", "--batch_size", "20",
           "--sweep", "steps=2;x0_clip=off,0.5"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((workdir / "eval" / "report.json").read_text())["records"]
    assert {r["id"].split("/")[1] for r in records} >= {"ddim_2steps", "ddim_2steps_clip0.5"}


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
    assert "FD-digits (lower is better" in md and "captions" not in md  # a digits report, as before
    for num, captions, message in ((1, "heldout", "an FD needs at least two samples"),
                                   (8, "novel", "--captions applies to text-to-image scenes models only")):
        with pytest.raises(ValueError, match=message):
            run_cells(run, run.select("latest"), first, tmp_path / "refused", num=num, captions=captions)
    assert not (tmp_path / "refused").exists()
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
