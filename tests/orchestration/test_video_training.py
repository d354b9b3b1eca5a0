"""A video run end to end at smoke size: moving digits through the loop with FVDM's
per-frame times, a filmstrip of samples, an exact resume; and the video config errors."""

import shutil

import jax
import numpy as np
import pytest

from configs.common import base_config, shrink_for_smoke
from diffusion.data import make_source
from orchestration.experiments.training import train
from orchestration.build.run_loader import load_run
from orchestration.build.validation import validate_config
from tests.orchestration.test_experiment import latest_params


def video_config(steps=4):
    c = shrink_for_smoke(base_config())
    c.data.name, c.data.resolution, c.data.frames = "moving_digits", 16, 4
    c.model.class_conditional = False
    c.model.attn_resolutions = (8,)
    c.model.num_res_blocks = 1
    c.diffusion.per_frame_prob = 0.5
    c.train.num_steps, c.train.batch_size, c.train.ckpt_every, c.train.sample_every = steps, 4, 2, steps
    c.sample.num = 2
    c.eval.fd_digits = False
    return c


def test_a_video_run_trains_samples_a_filmstrip_and_resumes_exactly(tmp_path, video_run):
    """``video_run`` trained 2 steps straight; here as a kill after its step-1 checkpoint left it,
    resumed to 2."""
    resumed = tmp_path / "resumed"
    shutil.copytree(video_run, resumed, ignore=shutil.ignore_patterns("2", "step_000002.*", ".lock"))
    train(video_run_config(), resumed, progress=False, devices=jax.devices()[:1])
    for a, b in zip(jax.tree.leaves(latest_params(video_run)), jax.tree.leaves(latest_params(resumed))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    run = load_run(video_run)
    assert run.sample_shape == (4, 16, 16, 1) and run.denoiser.module.temporal
    from PIL import Image

    strip = np.asarray(Image.open(video_run / "samples" / "step_000002.png"))
    assert strip.shape[:2] == (2 * 33 + 1, 4 * 33 + 1)  # 2 videos as rows of 4 frames, 32-pixel tiles


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.data, "frames", 1), "config.data.frames, an integer >= 2"),
    (lambda c: setattr(c.data, "frames", 0), "config.data.frames, an integer >= 2"),
    (lambda c: setattr(c.data, "frames", -3), "config.data.frames, an integer >= 2"),
    (lambda c: setattr(c.diffusion, "per_frame_prob", 1.5), "per_frame_prob must be a number in \\[0, 1\\]"),
    (lambda c: setattr(c.diffusion, "per_frame_prob", -0.1), "per_frame_prob must be a number in \\[0, 1\\]"),
    (lambda c: setattr(c.diffusion, "per_frame_prob", float("nan")), "per_frame_prob must be a number in \\[0, 1\\]"),
    (lambda c: setattr(c.data, "resolution", 32), "moving digits are 16x16"),
])
def test_bad_video_configs_are_named(change, match, tmp_path):
    c = video_config()
    change(c)
    with pytest.raises(ValueError, match=match):
        validate_config(c, "train")
        train(c, tmp_path / "w", progress=False, devices=jax.devices()[:1])
    assert not (tmp_path / "w").exists()


def test_frames_on_an_image_dataset_is_refused():
    with pytest.raises(ValueError, match="config.data.frames applies to video datasets"):
        make_source("digits", "train", frames=8)
    src, info = make_source("moving_digits", "heldout", frames=6)
    assert info.num_frames == 6 and src[0]["image"].shape == (6, 16, 16, 1)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """A 2-step smoke video work directory (a filmstrip at step 2) shared by the resume,
    sampling and evaluation tests."""
    wd = tmp_path_factory.mktemp("video") / "v"
    train(video_run_config(), wd, progress=False, devices=jax.devices()[:1])
    return wd


def video_run_config():
    c = video_config(2)
    c.train.ckpt_every = 1  # a checkpoint at step 1 to resume from
    return c


def test_launch_sample_writes_an_i2v_run_as_a_filmstrip_a_gif_and_the_truth(video_run):
    import subprocess
    import sys

    from PIL import Image

    from tests.launch.test_cli import _env

    wd = video_run
    out = subprocess.run([sys.executable, "-m", "launch.sample", "--workdir", str(wd), "--num", "3", "--steps", "2",
                          "--plan", "i2v", "--given_frames", "1", "--given_update", "clamp"],  # clamp: held exactly
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (png,) = (wd / "samples").glob("*plan-i2v-given1-clamp*_n3_heldout.png")
    npz = np.load(png.with_suffix(".npz"))
    assert np.asarray(Image.open(png)).shape[:2] == (3 * 33 + 1, 4 * 33 + 1)
    images, truth = npz["images"], npz["truth"]
    assert images.shape == truth.shape == (3, 4, 16, 16, 1)
    np.testing.assert_array_equal(images[:, 1], truth[:, 1])  # the given frame, exactly
    heldout, _ = make_source("moving_digits", "heldout", frames=4)
    np.testing.assert_array_equal(truth[2], np.round((heldout[2]["image"] + 1) * 127.5).astype(np.uint8))
    gif = Image.open(png.with_suffix(".gif"))
    assert gif.n_frames == 4


def test_the_training_sample_grid_takes_a_frame_giving_plan(video_run, tmp_path):
    """config.sample.sampler with an i2v plan: the training callback gives the first
    held-out videos' frame 0 (before, it failed asking for ground truth), and a long-video
    plan draws the longer strip."""
    from types import SimpleNamespace

    from PIL import Image

    from diffusion.data import DatasetInfo
    from orchestration.experiments.callbacks import sample_grid_callback
    from orchestration.generation.video import truth_videos

    run = load_run(video_run)
    state = SimpleNamespace(ema_params=run.params(run.select("latest")[0]))
    info = DatasetInfo(image_shape=(16, 16, 1), num_classes=None, size=1, num_frames=4)
    # given_update=clamp: the given frame drawn exactly (the default re-estimates it, issue 26)
    for sampler, frames in (("solver=ddim;steps=2;plan=i2v;given_update=clamp", 4),
                            ("solver=ddim;steps=2;plan=long:6", 6)):
        config = video_config(2)
        config.sample.sampler, config.sample.num = sampler, 2
        sample_grid_callback(run.denoiser, run.caps, info, config, tmp_path)(7, state)
        strip = np.asarray(Image.open(tmp_path / "samples" / "step_000007.png"), np.float64)
        assert strip.shape[:2] == (2 * 33 + 1, frames * 33 + 1)
        if frames == 4:  # frame 0 of each row is the held-out video's, as make_grid draws it (2x, 1-pixel border)
            truth = truth_videos(config, "heldout", 2, 4)[:, 0, ..., 0]
            for row in range(2):
                tile = strip[1 + 33 * row:33 * (row + 1):2, 1:33:2]
                np.testing.assert_allclose(tile, np.round((truth[row] + 1) * 127.5), atol=1)


def test_sharded_video_plans_equal_the_single_device_run(video_run):
    """launch.sample and launch.evaluate split a video model's batches over every device
    too: i2v (given frames placed with the batch) and long video (later windows) on the 8
    fake devices equal the one-device videos, batches of 3 padded to 8, a short last one."""
    from diffusion.train.sharding import make_mesh
    from orchestration.generation.video import generate_video, truth_videos
    from sampling.spec import SamplerSpec

    run = load_run(video_run)
    params = run.params(run.select("latest")[0])
    mesh = make_mesh(-1, 1, jax.devices())
    assert mesh.devices.size == 8
    for sampler in ("solver=ddim;steps=2;plan=i2v", "solver=ddim;steps=2;plan=long:6"):
        spec = SamplerSpec.parse(sampler)
        kwargs = dict(truth=truth_videos(run.config, "heldout", 5, 6 if "long" in sampler else 4), seed=2,
                      batch_size=3)
        one = generate_video(run.denoiser, params, run.sample_shape, 5, spec, run.caps, **kwargs)
        sharded = generate_video(run.denoiser, params, run.sample_shape, 5, spec, run.caps, mesh=mesh, **kwargs)
        np.testing.assert_allclose(sharded, one, rtol=0, atol=2e-6)  # float rounding, as for images
        assert float(np.abs(one[0] - one[1]).max()) > 0.1


def test_evaluate_sweeps_plans_with_the_video_metrics(video_run):
    from diffusion.metrics.psnr import mean_psnr
    from orchestration.generation.evaluation import run_cells
    from orchestration.generation.sweep import parse_sweep
    from orchestration.generation.video import generate_video, truth_videos

    run = load_run(video_run)
    cells = parse_sweep("solver=ddim;steps=2;plan=sync,i2v,long:9")
    records = {r["plan"]: r for r in run_cells(run, run.select("latest"), cells, video_run / "eval", num=4,
                                               progress=False)}
    assert set(records) == {"sync", "i2v", "long:9"}
    for r in records.values():
        assert np.isfinite(r["fvd_proxy"]) and 0 <= r["identity_stability"] <= 1 and np.isfinite(r["frame_fd"])
    assert "psnr" not in records["sync"] and len(records["long:9"]["window_frame_fd"]) == 2
    from orchestration.generation.evaluation import write_report

    write_report(list(records.values()), video_run / "eval", "video")
    text = (video_run / "eval" / "report.md").read_text()
    assert "FVD proxy" in text and "identity stability" in text and "plan long:9" in text
    i2v = next(c for c in cells if c.spec.knobs("plan")["kind"] == "i2v")
    truth = truth_videos(run.config, "heldout", 4, 4)
    videos = generate_video(run.denoiser, run.params(run.select("latest")[0]), run.sample_shape, 4, i2v.spec, run.caps,
                            truth=truth, seed=i2v.seed)
    want = mean_psnr(videos[:, 1:].reshape(-1, 16, 16, 1), truth[:, 1:].reshape(-1, 16, 16, 1))
    np.testing.assert_allclose(records["i2v"]["psnr"], want, rtol=1e-6)


def test_the_video_configs_validate():
    from configs import moving_digits

    for variant, p in [("", 0.2), ("p0", 0.0), ("p1", 1.0), ("smoke", 0.2)]:
        c = moving_digits.get_config(variant)
        validate_config(c, "train")
        assert c.diffusion.per_frame_prob == p and c.data.frames == (4 if variant == "smoke" else 8)
    with pytest.raises(ValueError, match="unknown variant 'p5'"):
        moving_digits.get_config("p5")
