"""Nothing lost, nothing silently wrong (issue 10): each hostile case found on the code at
9128ccb, through orchestration.experiments.training.train in-process on one device."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import digits, digits_progressive
from diffusion.train.writer import read_metrics
from orchestration.experiments.training import train
from orchestration.workdir.directory import WorkdirBusyError, WorkdirMismatchError, lock
from tests.orchestration.test_experiment import latest_params

pytestmark = pytest.mark.slow


def smoke(**overrides):
    c = digits.get_config("smoke")
    c.train.sample_every, c.eval.fd_digits = 0, False
    c.train.num_steps, c.train.ckpt_every, c.train.log_every = 8, 4, 2
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def run(config, wd):
    return train(config, wd, progress=False, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """8 steps, checkpoints at 4 and 8, logged every 2 steps."""
    wd = tmp_path_factory.mktemp("safety") / "run"
    run(smoke(), wd)
    return wd


def snapshot(wd):
    return {p.relative_to(wd): p.stat().st_mtime_ns for p in wd.rglob("*") if p.name != ".lock"}


def test_keep_last_zero_on_resume_deletes_nothing(trained, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    before = snapshot(wd)
    with pytest.raises(ValueError, match="config.train.keep_last must be an integer >= 1, got 0"):
        run(smoke(**{"train.keep_last": 0, "train.num_steps": 12}), wd)
    assert snapshot(wd) == before


def test_a_damaged_newest_checkpoint_is_named_moved_aside_and_resume_is_exact(trained, tmp_path, capsys):
    """A flipped byte in checkpoint 8: the rerun says so, keeps it in damaged_checkpoints/,
    resumes from 4 and ends where the undamaged run ended; steps 6 and 8 are logged once."""
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    data = max((p for p in (wd / "checkpoints" / "8" / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    run(smoke(), wd)
    err = capsys.readouterr().err
    assert "checkpoint 8 is damaged" in err and "trying step 4" in err
    assert (wd / "damaged_checkpoints" / "8" / "state").is_dir()
    (sa, a), (sb, b) = latest_params(trained), latest_params(wd)
    assert sa == sb == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r["step"] for r in read_metrics(wd) if "loss" in r] == [2, 4, 6, 8]


def test_a_resumed_checkpoint_is_recorded_when_the_killed_run_could_not(trained, tmp_path):
    """A kill -9 after checkpoint 8 committed but before metrics.jsonl said so (seen at step 120
    in a kill trial): the resumed run writes the missing {"checkpoint": 8} row, the record the
    removed-checkpoint check relies on."""
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    path = wd / "metrics.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                            if json.loads(line).get("checkpoint") != 8))
    run(smoke(**{"train.num_steps": 12}), wd)
    assert [r["step"] for r in read_metrics(wd) if "checkpoint" in r] == [4, 8, 12]


def test_removed_checkpoints_are_an_error_not_a_restart(trained, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    for step_dir in (wd / "checkpoints").iterdir():
        shutil.rmtree(step_dir)
    before = snapshot(wd)
    with pytest.raises(FileNotFoundError, match="has no checkpoint, but its metrics.jsonl records that checkpoints "
                                                "were written \\(the newest at step 8\\)"):
        run(smoke(), wd)
    assert snapshot(wd) == before


def test_a_second_trainer_is_refused_while_the_first_holds_the_directory(trained, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    before = snapshot(wd)
    with lock(wd):
        with pytest.raises(WorkdirBusyError, match=f"work directory {wd} is in use by pid"):
            run(smoke(**{"train.num_steps": 12}), wd)
    assert snapshot(wd) == before


@pytest.mark.parametrize("overrides,message", [
    ({"model.pred_type": "vv"}, "config.model.pred_type is 'vv'; expected one of eps, x0, v"),
    ({"train.num_steps": 0}, "config.train.num_steps must be an integer >= 1, got 0"),
    ({"train.num_steps": -5}, "config.train.num_steps must be an integer >= 1, got -5"),
    ({"train.ckpt_every": 0}, "config.train.ckpt_every must be an integer >= 1"),
    ({"train.log_every": 0}, "config.train.log_every must be an integer >= 1"),
    ({"train.lr": float("nan")}, "config.train.lr must be a finite number"),
    ({"diffusion.weighting": "l1"}, "config.diffusion.weighting is 'l1'"),
    ({"eval.sampler": "solver=ddim;steps=0"}, "config.eval.sampler='solver=ddim;steps=0': bad steps"),
    ({"sample.sampler": "solver=ddim;steps=5;attention_reuse=phast:2"}, "no PHAST schedule"),
    ({"train.lora_rank": -1}, "config.train.lora_rank must be an integer >= 0"),
    ({"train.lora_rank": 2, "train.lora_alpha": float("nan")}, "config.train.lora_alpha must be a finite number > 0"),
    ({"train.lora_rank": 999}, "train.lora_rank=999 exceeds the smaller side"),
])
def test_a_bad_config_writes_nothing_and_the_corrected_one_runs(tmp_path, overrides, message):
    wd = tmp_path / "run"
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("(", r"\(").replace("[", r"\[")):
        run(smoke(**overrides), wd)
    assert not wd.exists()


def test_the_corrected_config_runs_after_a_typo(tmp_path):
    wd = tmp_path / "run"
    with pytest.raises(ValueError):
        run(smoke(**{"model.pred_type": "vv", "train.num_steps": 2}), wd)
    run(smoke(**{"train.num_steps": 2}), wd)  # not refused as "a different config"
    assert json.loads((wd / "config.json").read_text())["model"]["pred_type"] == "eps"


def test_wrong_command_wrong_directory_and_wrong_mesh_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="run it with `python -m launch.distill`"):
        run(digits_progressive.get_config("smoke"), tmp_path / "d")
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(WorkdirMismatchError, match="is a file, not a directory"):
        run(smoke(), a_file)
    with pytest.raises(ValueError, match="batch_size=12 does not split over the 8 devices"):
        train(smoke(**{"train.batch_size": 12}), tmp_path / "m", progress=False, devices=jax.devices())
    with pytest.raises(ValueError, match=r"mesh data=3 x fsdp=1 does not use the 8 available devices; set "
                                         r"config.mesh.data / config.mesh.fsdp so that their product is 8"):
        train(smoke(**{"mesh.data": 3}), tmp_path / "m", progress=False, devices=jax.devices())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and a_file.read_text() == "mine"


def test_a_damaged_config_json_is_named(trained, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    (wd / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match=f"{wd / 'config.json'} is damaged"):
        run(smoke(), wd)
