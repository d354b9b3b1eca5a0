"""End-to-end training through orchestration.experiments.training.train (in-process, one device)."""

import json

import jax
import numpy as np
import pytest

from configs import cifar10, digits
from diffusion.train import checkpoint
from diffusion.train.writer import read_metrics
from orchestration.experiments.training import train
from orchestration.workdir.directory import WorkdirMismatchError

pytestmark = pytest.mark.slow


def smoke(**overrides):
    c = digits.get_config("smoke")
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def latest_params(workdir):
    mngr = checkpoint.make_manager(workdir)
    step = mngr.latest_step()
    raw = mngr.restore(step, args=checkpoint.ocp.args.Composite(state=checkpoint.ocp.args.StandardRestore()))
    mngr.close()
    return step, raw["state"]


def test_smoke_run_writes_the_work_directory(tmp_path, one_device):
    wd = tmp_path / "run"
    result = train(smoke(), wd, progress=False, devices=one_device)
    assert json.loads((wd / "config.json").read_text())["train"]["num_steps"] == 20
    assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
    records = read_metrics(wd)
    assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20]
    assert all(np.isfinite(r["loss"]) and r["steps_per_sec"] > 0 for r in records if "loss" in r)
    assert sorted(p.name for p in (wd / "samples").iterdir()) == ["step_000010.png", "step_000020.png"]
    assert list((wd / "tb").glob("events.out.tfevents.*"))
    assert result["num"] == 100 and 0 <= result["class_accuracy"] <= 1 and result["fd_digits"] > 0
    assert json.loads((wd / "fd_digits.json").read_text())["fd_digits"] == result["fd_digits"]
    assert any("fd_digits" in r for r in records)


def test_resume_equals_uninterrupted(tmp_path, one_device):
    """N steps in one go == N/2 steps, stop, re-run the command with N (params identical)."""
    common = {"train.lr_schedule": "constant", "train.sample_every": 0, "eval.fd_digits": False,
              "train.ckpt_every": 4}
    train(smoke(**common, **{"train.num_steps": 12}), tmp_path / "a", progress=False, devices=one_device)
    train(smoke(**common, **{"train.num_steps": 6}), tmp_path / "b", progress=False, devices=one_device)
    train(smoke(**common, **{"train.num_steps": 12}), tmp_path / "b", progress=False, devices=one_device)
    (sa, a), (sb, b) = latest_params(tmp_path / "a"), latest_params(tmp_path / "b")
    assert sa == sb == 12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [r["step"] for r in read_metrics(tmp_path / "b") if "loss" in r]
    assert steps == [5, 6, 10, 12]  # continued, not restarted


def test_mismatched_config_is_refused_and_nothing_is_overwritten(tmp_path, one_device):
    wd = tmp_path / "run"
    cfg = smoke(**{"train.num_steps": 4, "train.sample_every": 0, "eval.fd_digits": False})
    train(cfg, wd, progress=False, devices=one_device)
    before = {p: p.stat().st_mtime_ns for p in wd.rglob("*")}
    other = smoke(**{"train.num_steps": 4, "model.channels": 16, "train.lr": 0.5})
    with pytest.raises(WorkdirMismatchError) as e:
        train(other, wd, progress=False, devices=one_device)
    assert "model.channels: saved 8, now 16" in str(e.value) and "train.lr: saved 0.001, now 0.5" in str(e.value)
    assert {p: p.stat().st_mtime_ns for p in wd.rglob("*")} == before


def test_a_foreign_directory_is_refused(tmp_path, one_device):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorkdirMismatchError, match="not a Kairos work directory"):
        train(smoke(), tmp_path, progress=False, devices=one_device)
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


def test_unknown_dataset_lists_available(tmp_path, one_device):
    with pytest.raises(ValueError, match="available: digits, digits_thick, scenes, moving_digits, synthetic"):
        train(smoke(**{"data.name": "imagenet"}), tmp_path / "x", progress=False, devices=one_device)


def test_cifar10_smoke_on_mock_tfds(tmp_path, one_device):
    import tensorflow_datasets as tfds

    from orchestration.build.run_loader import load_run
    from orchestration.generation.scoring import scoring_for

    with tfds.testing.mock_data(num_examples=16):
        train(cifar10.get_config("smoke"), tmp_path / "c", progress=False, devices=one_device)
        with pytest.raises(ValueError, match="model of 'cifar10', which has no metric here .*sample it with "
                                             "launch.sample"):
            scoring_for(load_run(tmp_path / "c"), 10)  # what configs/cifar10.py says: sample it, no FID yet
    step, state = latest_params(tmp_path / "c")
    assert step == 6 and state["params"]["conv_out"]["kernel"].shape == (3, 3, 8, 3)
    assert (tmp_path / "c" / "samples" / "step_000006.png").exists()


def test_cifar10_config_is_the_ddpm_35_7m_unet():
    from diffusion.data.sources import DatasetInfo
    from orchestration.build.builders import build_unet

    model = build_unet(cifar10.get_config().model, DatasetInfo((32, 32, 3), 10, 1))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 32, 32, 3)),
                                               jax.numpy.zeros((1,))))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == pytest.approx(35.7e6, rel=2e-3)
