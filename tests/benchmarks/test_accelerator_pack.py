"""The accelerator pack's parts that need no accelerator: the peak table it divides by,
its flags, and one training row on a tiny network (the FLOPs XLA counts for the step)."""

import json

import jax
import pytest

from benchmarks import accelerator


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA A100-SXM4-40GB", 312e12), ("TPU v5 lite", 197e12),
                                        ("TPU v5p", 459e12), ("TPU v4", 275e12), ("cpu", None)])
def test_peak_of_each_device_kind(kind, peak):
    assert accelerator.peak_flops(kind) == peak


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--repeats", "-1"]])
def test_bad_counts_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        accelerator.parse_args(argv)
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_an_unwritable_out_is_refused_before_measuring(tmp_path, capsys):
    for out, why in ((tmp_path, "is a directory"), (tmp_path / "file" / "r.json", "cannot be written")):
        (tmp_path / "file").write_text("not a directory")
        with pytest.raises(SystemExit) as e:
            accelerator.parse_args(["--out", str(out)])
        assert e.value.code == 2 and why in capsys.readouterr().err


def test_results_are_written_whole(tmp_path, capsys):
    from benchmarks.common import emit

    out = tmp_path / "r.json"
    out.write_text("old")
    emit({"a": 1}, str(out))
    assert json.loads(out.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_training_row_reports_steps_flops_and_mfu():
    from diffusion.nn.denoiser import Denoiser
    from diffusion.nn.unet import UNet
    from diffusion.schedules import make_schedule

    den = Denoiser(UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=()), make_schedule("linear"))
    batch = lambda b, key: {"image": jax.random.normal(key, (b, 8, 8, 1))}  # noqa: E731
    row = accelerator.train_rate(den, batch, "eps", 4, steps=2, peak=1e12)
    assert row["batch"] == 4 and row["step_tflop"] > 0 and row["steps_per_s"] == pytest.approx(1 / row["step_s_median"])
    assert row["mfu"] == pytest.approx(row["achieved_tflops"] * 1e12 / 1e12)
    assert row["images_per_s"] == pytest.approx(4 * row["steps_per_s"])
