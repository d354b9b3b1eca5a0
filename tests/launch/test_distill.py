"""launch.distill end to end on a smoke-trained v-prediction teacher: the four methods,
exact resume after a preemption, teacher errors, and students through launch.sample /
launch.evaluate."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import digits_consistency, digits_guided, digits_progressive, digits_tiue, digits_v
from diffusion.train import loop
from diffusion.train.writer import read_metrics
from orchestration.experiments.distillation import TeacherError, distill
from orchestration.experiments.training import train
from orchestration.build.run_loader import load_run
from tests.conftest import ROOT
from tests.launch.test_cli import _env
from tests.orchestration.test_experiment import latest_params

pytestmark = pytest.mark.slow
CONFIGS = {"progressive": digits_progressive, "guided": digits_guided, "consistency": digits_consistency,
           "tiue": digits_tiue}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    wd = tmp_path_factory.mktemp("teacher") / "run"
    c = digits_v.get_config("smoke")
    c.train.sample_every = 0
    c.eval.fd_digits = False
    train(c, wd, progress=False, devices=jax.devices()[:1])
    return wd


@pytest.fixture(scope="module")
def students(teacher, tmp_path_factory):
    """Each method's smoke student, distilled once for the module."""
    import contextlib
    import io

    from orchestration.workdir.directory import lock

    root = tmp_path_factory.mktemp("students")
    for name, module in CONFIGS.items():
        said = io.StringIO()  # the first student is distilled while a "trainer" holds the teacher's lock
        with contextlib.redirect_stderr(said), lock(teacher) if name == "progressive" else contextlib.nullcontext():
            distill(smoke(module, teacher), root / name, progress=False, devices=jax.devices()[:1])
        (root / f"{name}.stderr").write_text(said.getvalue())
    return root


def smoke(module, teacher, fd=False):
    c = module.get_config("smoke")
    c.distill.teacher_workdir = str(teacher)
    if module is digits_tiue:  # this module's teacher predicts v: TiUE's declared :v path (the KL on derived eps)
        c.distill.kl_on = "derived_eps"
    c.eval.fd_digits = fd
    return c


def test_students_record_their_teacher_and_a_teacher_in_training_is_said(teacher, students):
    step = load_run(teacher).steps[-1]
    for name in CONFIGS:
        record = json.loads((students / name / "teacher.json").read_text())
        assert record == {"workdir": str(teacher.resolve()), "step": step}
        note = [line for line in (students / f"{name}.stderr").read_text().splitlines() if "being written" in line]
        assert note == ([f"note: the teacher {teacher} is being written by pid {os.getpid()}; distilling from its "
                         f"checkpoint at step {step}, the newest committed one it had when read (recorded in "
                         f"{students / name / 'teacher.json'})"] if name == "progressive" else []), note


@pytest.mark.parametrize("text", ["{not json", '{"workdir": "w"}', '{"step": "4"}', "[4]", "\xff"])
def test_a_damaged_teacher_record_is_named(tmp_path, text):
    from orchestration.experiments.distillation import read_teacher_record

    (tmp_path / "teacher.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=f"{tmp_path / 'teacher.json'} is damaged .* delete it to take the teacher's"):
        read_teacher_record(tmp_path)
    assert read_teacher_record(tmp_path / "new") is None


def test_students_are_ordinary_work_directories(students):
    for name in CONFIGS:
        run = load_run(students / name)
        saved = json.loads((students / name / "config.json").read_text())
        assert saved["model"]["pred_type"] == "v" and saved["model"]["dropout"] == 0.0
        assert saved["model"]["guidance_embed"] == (name == "guided")
        losses = [r["loss"] for r in read_metrics(students / name) if "loss" in r]
        assert len(losses) == 4 and all(np.isfinite(losses))
        if name == "consistency":
            assert saved["eval"]["sampler"] == "solver=consistency;steps=4;grid=trailing"
            assert type(run.denoiser).__name__ == "ConsistencyFunction"
        elif name == "tiue":  # sampled loop-free on its K = 2 grid; both networks trained
            assert saved["eval"]["sampler"] == saved["sample"]["sampler"] == "solver=ddim;steps=2;grid=leading;loopfree=on"
            step, state = latest_params(students / name)
            teacher = state["extra"]["teacher"]
            moved = lambda a, b: max(float(np.abs(np.asarray(x) - np.asarray(y)).max())  # noqa: E731
                                     for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
            b = [ab["b"] for ab in state["extra"]["fake"].values()]  # the fake score: LoRA over the teacher, b from 0
            assert step == 8 and moved(state["params"], teacher) > 0 and moved(b, [0 * x for x in b]) > 0
            assert int(jax.tree.leaves(state["extra"]["fake_opt"])[0]) == 8  # Adam's count: one fake step per step
            assert all(np.isfinite(r["noise_kl"]) for r in read_metrics(students / name) if "noise_kl" in r)
        else:  # 8 -> 4 -> 2 steps, one kept checkpoint per round
            assert saved["train"]["num_steps"] == 8
            assert saved["eval"]["sampler"] == ("solver=ddim;steps=2;grid=trailing;clip_x0=1"  # the reference's sampler
                                                + (";guidance=2" if name == "guided" else ""))
            assert run.steps == [4, 8]
            metrics = [r for r in read_metrics(students / name) if "round" in r]
            assert [(r["step"], r["round"], r["student_steps"]) for r in metrics] == [
                (2, 0, 4), (4, 0, 4), (6, 1, 2), (8, 1, 2)]


def test_round_boundary_hands_the_student_to_the_teacher(students):
    step, state = latest_params(students / "progressive")
    assert step == 8 and int(state["extra"]["round"]) == 1 and int(state["extra"]["student_steps"]) == 2
    raw = latest_params_at(students / "progressive", 4)
    # the checkpoint at the end of round 0 already holds round 1's teacher: the round-0 student
    for a, b in zip(jax.tree.leaves(raw["extra"]["teacher"]), jax.tree.leaves(raw["ema_params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def latest_params_at(workdir, step):
    from diffusion.train import checkpoint

    mngr = checkpoint.make_manager(workdir)
    raw = mngr.restore(step, args=checkpoint.ocp.args.Composite(state=checkpoint.ocp.args.StandardRestore()))
    mngr.close()
    return raw["state"]


class PreemptAfter:
    """Stands in for the loop's signal flag: reports SIGTERM once ``n`` steps have run."""

    def __init__(self, n):
        self.n, self.reads = n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def signum(self):
        self.reads += 1
        return signal.SIGTERM if self.reads >= self.n else None


@pytest.mark.parametrize("name", ["progressive", "tiue"])
def test_preempted_distillation_resumes_exactly(name, teacher, students, tmp_path, monkeypatch):
    """Preempted at step 3 (progressive: mid round 0), re-run -> identical params, EMA and
    extra state to the uninterrupted run (progressive: teacher and round across the round
    boundary; TiUE: the fake score and its own optimizer state)."""
    wd = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(loop, "_SignalFlag", lambda: PreemptAfter(3))
        with pytest.raises(loop.Preempted):
            distill(smoke(CONFIGS[name], teacher), wd, progress=False, devices=jax.devices()[:1])
    assert latest_params(wd)[0] == 3
    distill(smoke(CONFIGS[name], teacher), wd, progress=False, devices=jax.devices()[:1])
    (sa, a), (sb, b) = latest_params(students / name), latest_params(wd)
    assert sa == sb == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_teacher_errors_are_clear_and_write_nothing(teacher, tmp_path):
    wd = tmp_path / "student"
    with pytest.raises(TeacherError, match="has no config.json"):
        distill(smoke(digits_progressive, tmp_path / "nowhere"), wd, progress=False)
    eps_teacher = tmp_path / "eps"
    shutil.copytree(teacher, eps_teacher)
    config = json.loads((eps_teacher / "config.json").read_text())
    config["model"]["pred_type"] = "eps"
    (eps_teacher / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match="needs a v- or x0-prediction teacher"):
        distill(smoke(digits_progressive, eps_teacher), wd, progress=False)
    config["model"]["pred_type"], config["diffusion"]["cond_drop_prob"] = "v", 0.0
    (eps_teacher / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match="label dropout"):
        distill(smoke(digits_guided, eps_teacher), wd, progress=False)
    zero = smoke(digits_progressive, teacher)
    zero.train.ckpt_every = 0  # the rounds divide by it: checked before the method sees it
    with pytest.raises(ValueError, match="config.train.ckpt_every must be an integer >= 1, got 0"):
        distill(zero, wd, progress=False)
    assert not wd.exists()


def test_students_sample_and_evaluate_on_their_own_grid(students):
    """The consistency student through the launch.sample CLI (its own solver and wrapper);
    the others through the same generate() path (TiUE's with its loop-free sampler, not the
    2-step loop); the guided one through launch.evaluate's
    default sweep (its distilled steps and w), for every kept round checkpoint."""
    from orchestration.generation.evaluation import default_sweep, run_cells
    from orchestration.generation.generate import class_labels, generate
    from orchestration.generation.sweep import parse_sweep
    from sampling.spec import SamplerSpec

    wd = students / "consistency"
    cmd = [sys.executable, "-m", "launch.sample", "--workdir", str(wd), "--num", "20"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(wd / "samples" / "consistency_4steps_ckpt8_seed0_n20.npz")["images"].shape == (20, 8, 8, 1)
    for name in ("progressive", "guided", "tiue"):
        run = load_run(students / name)
        spec = SamplerSpec.parse(run.config.sample.sampler).merged({"guidance": 3.0} if name == "guided" else {})
        images = generate(run.denoiser, run.params(8), run.info.image_shape, 20, spec, run.caps,
                          labels=class_labels(20, run.num_classes))
        assert images.shape == (20, 8, 8, 1) and np.all(np.isfinite(images))
        if name == "tiue":
            loop_images = generate(run.denoiser, run.params(8), run.info.image_shape, 20, spec.without("loopfree"),
                                   run.caps, labels=class_labels(20, run.num_classes))
            assert not np.array_equal(loop_images, images)  # (the smoke teacher barely depends on x: close)
    run = load_run(students / "guided")
    assert default_sweep(run.config) == "solver=ddim;steps=2;grid=trailing;clip_x0=1;guidance=2"
    records = run_cells(run, run.steps, parse_sweep(default_sweep(run.config)), students / "guided" / "eval", 50,
                        progress=False)
    assert [(r["ckpt"], r["steps"], r["guidance"]) for r in records] == [(4, 2, "2"), (8, 2, "2")]
    assert all(np.isfinite(r["fd_digits"]) for r in records)


def test_guided_student_at_w_equals_its_teacher_before_training(teacher):
    """The zero-initialised w embedding: a fresh guided student is the teacher for every w."""
    from orchestration.build.builders import build_denoiser, init_params
    from orchestration.experiments.distillation import _start_from, student_config
    from orchestration.build.run_loader import load_run as load

    t_run = load(teacher)
    cfg = student_config(smoke(digits_guided, teacher), t_run)
    student = build_denoiser(cfg, t_run.info)
    # jitted: one compile each instead of every initializer's and every op's (most of this test's time)
    fresh = jax.jit(lambda key: init_params(cfg, t_run.info, key))(jax.random.PRNGKey(1))
    t_params = t_run.params(t_run.steps[-1])
    params = _start_from(fresh, t_params)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 1))
    t, label = jax.numpy.full((4,), 0.6), jax.numpy.arange(4)
    want = jax.jit(lambda p: t_run.denoiser(p, x, t, {"label": label})[0].x0)(t_params)
    student_x0 = jax.jit(lambda p, w: student(p, x, t, {"label": label, "guidance": jax.numpy.full((4,), w)})[0].x0)
    for w in (1.0, 2.5, 7.0):
        got = student_x0(params, w)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def pso_smoke(students, **distill):
    from configs import digits_pso

    c = digits_pso.get_config("smoke")
    c.distill.teacher_workdir = str(students / "progressive")
    c.distill.update(distill)
    return c


def test_pso_with_lora_tunes_a_student_and_resumes_exactly(students, tmp_path, monkeypatch):
    """PSO (DPO loss, rank-2 LoRA) on the 2-step progressive student: the base stays the
    student's, the adapters move, the offline references sit in the checkpoint, the sampling
    params are the merged network params; preempted at step 3 == uninterrupted."""
    config = pso_smoke(students, loss="dpo")
    config.train.lora_rank = 2
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    distill(config, whole, progress=False, devices=jax.devices()[:1])
    with monkeypatch.context() as m:
        m.setattr(loop, "_SignalFlag", lambda: PreemptAfter(3))
        with pytest.raises(loop.Preempted):
            distill(config, resumed, progress=False, devices=jax.devices()[:1])
    distill(config, resumed, progress=False, devices=jax.devices()[:1])
    (sa, a), (sb, b) = latest_params(whole), latest_params(resumed)
    assert sa == sb == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _, student = latest_params(students / "progressive")
    for x, y in zip(jax.tree.leaves(a["params"]["base"]), jax.tree.leaves(student["ema_params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert all(np.abs(np.asarray(ab["b"])).max() > 0 for ab in a["params"]["adapters"].values())
    assert a["extra"]["images"].shape == (20, 8, 8, 1) and list(a["extra"]["labels"][:11]) == [*range(10), 0]
    with np.load(whole / "pso_references.npz") as cache:  # the work directory's reference cache: the same
        np.testing.assert_array_equal(cache["images"], a["extra"]["images"])
        np.testing.assert_array_equal(cache["labels"], a["extra"]["labels"])
    run = load_run(whole)  # an ordinary work directory: network params, its own 2-step sampler
    assert run.config.data.name == "digits_thick" and run.config.sample.sampler == "solver=ddim;steps=2;grid=trailing"
    ema = run.params(8)
    assert jax.tree.structure(ema) == jax.tree.structure(student["ema_params"])
    (resumed / "pso_references.npz").unlink()  # a lost cache is named; nothing is written
    before = sorted(p.name for p in resumed.rglob("*"))
    config.train.num_steps = 12
    with pytest.raises(ValueError, match=r"reference cache .*pso_references.npz is missing"):
        distill(config, resumed, progress=False, devices=jax.devices()[:1])
    assert sorted(p.name for p in resumed.rglob("*")) == before


def test_online_pso_ranks_by_the_reward(students, tmp_path):
    wd = tmp_path / "online"
    distill(pso_smoke(students, mode="online", beta=50.0), wd, progress=False, devices=jax.devices()[:1])
    rows = [r for r in read_metrics(wd) if "loss" in r]
    assert len(rows) == 4 and all(np.isfinite(r["reward"]) and r["reward_gap"] >= 0 for r in rows)
    assert rows[0]["loss"] == pytest.approx(np.log(2.0), abs=0.05)  # near the start: tuned ~ reference
    (_, tuned), (_, student) = latest_params(wd), latest_params(students / "progressive")
    moved = [float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(tuned["params"]), jax.tree.leaves(student["ema_params"]))]
    assert max(moved) > 0  # the gradient reaches the tuned params
    assert not (wd / "pso_references.npz").exists()  # online needs no references


def test_pso_errors_are_clear_and_write_nothing(teacher, students, tmp_path):
    wd = tmp_path / "pso"
    config = pso_smoke(students)
    config.distill.teacher_workdir = str(teacher)
    with pytest.raises(TeacherError, match="tunes a timestep-distilled student.*is a diffusion model"):
        distill(config, wd, progress=False)
    config.distill.teacher_workdir = str(students / "tiue")
    with pytest.raises(TeacherError, match="is a tiue student"):
        distill(config, wd, progress=False)
    with pytest.raises(TeacherError, match=r"teacher_step=5: .* checkpoints at steps \[4, 8\]"):
        distill(pso_smoke(students, teacher_step=5), wd, progress=False)
    bigger = pso_smoke(students)
    bigger.data.resolution = 16
    with pytest.raises(ValueError, match=r"holds \(16, 16, 1\) samples.*use data of the same shape"):
        distill(bigger, wd, progress=False)
    with pytest.raises(ValueError, match="unknown reward 'beauty'; registered: class, thick"):
        distill(pso_smoke(students, mode="online", reward="beauty"), wd, progress=False)
    with pytest.raises(ValueError, match="absent.npz: no such references file"):
        distill(pso_smoke(students, references=str(tmp_path / "absent.npz")), wd, progress=False)
    assert not wd.exists()
    # and a non-tuning method still refuses a student teacher
    with pytest.raises(TeacherError, match="is a tiue student; distil from a diffusion model"):
        distill(smoke(digits_progressive, students / "tiue"), wd, progress=False)
