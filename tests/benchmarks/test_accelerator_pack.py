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


@pytest.mark.parametrize("sections", ["training,speed", ",", "Training"])
def test_unknown_sections_are_one_line(sections, capsys):
    with pytest.raises(SystemExit) as e:
        accelerator.parse_args(["--sections", sections])
    assert e.value.code == 2 and "--sections takes a comma-separated subset of training," in capsys.readouterr().err


def test_a_run_cut_short_keeps_the_sections_it_measured(tmp_path, monkeypatch):
    def broken(*args):
        raise KeyboardInterrupt("the lease ran out")

    monkeypatch.setattr(accelerator, "training", lambda *args: {"rows": [1, 2]})
    monkeypatch.setattr(accelerator, "reuse_and_caching", broken)
    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        accelerator.main(["--out", str(out), "--sections", "training,reuse_and_caching"])
    got = json.loads(out.read_text())
    assert got["training"] == {"rows": [1, 2]} and got["complete"] is False and "reuse_and_caching" not in got
    monkeypatch.setattr(accelerator, "reuse_and_caching", lambda *args: {"one": 1})
    accelerator.main(["--out", str(out), "--sections", "reuse_and_caching"])
    got = json.loads(out.read_text())
    assert got["reuse_and_caching"] == {"one": 1} and got["complete"] is True and "training" not in got


def test_flops_are_counted_on_the_lowered_program():
    """A 1x1 convolution's FLOPs, 2 B H W Cin Cout, exactly; a compiled program is refused
    (on a GPU its count leaves out the convolutions handed to cuDNN)."""
    import jax.numpy as jnp

    from benchmarks.common import flops_of

    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    lowered = conv.lower(jnp.ones((2, 8, 8, 16)), jnp.ones((1, 1, 16, 32)))
    assert flops_of(lowered) == 2 * 2 * 8 * 8 * 16 * 32
    with pytest.raises(TypeError, match="takes a lowered program"):
        flops_of(lowered.compile())


def _tiny_case(reduced):
    from diffusion.nn.denoiser import Denoiser
    from diffusion.nn.unet import UNet
    from diffusion.schedules import make_schedule

    den = Denoiser(UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=()), make_schedule("linear"))
    return den, (lambda b, key: {"image": jax.random.normal(key, (b, 8, 8, 1))}), "eps"


def test_recount_rewrites_the_training_rows_flops_and_mfu(tmp_path, monkeypatch):
    """The recount (shapes only) gives the count of the step that ran, and the achieved
    TFLOP/s and MFU at the row's own median step time; error rows are kept."""
    monkeypatch.setattr(accelerator, "TRAIN_CASES", {"tiny": _tiny_case})
    measured = accelerator.train_rate(*_tiny_case(True), 4, steps=1, peak=2e12)
    stale = {**measured, "step_tflop": 1e-9, "achieved_tflops": 1e-9, "mfu": 1e-9, "step_s_median": 0.5}
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"reduced": True, "peak_bf16_flops": 2e12,
                               "training": {"tiny": [stale, {"batch": 8, "error": "out of memory"}]}}))
    accelerator.main(["--recount", str(out)])
    rows = json.loads(out.read_text())["training"]["tiny"]
    assert rows[0]["step_tflop"] == pytest.approx(measured["step_tflop"], rel=1e-9)
    assert rows[0]["achieved_tflops"] == pytest.approx(measured["step_tflop"] / 0.5)
    assert rows[0]["mfu"] == pytest.approx(measured["step_tflop"] * 1e12 / 0.5 / 2e12)
    assert rows[1] == {"batch": 8, "error": "out of memory"}


@pytest.mark.parametrize("text, why", [("{", "not an accelerator pack result"),
                                       ('{"reduced": true, "peak_bf16_flops": null}', "KeyError"),
                                       ('{"reduced": true, "peak_bf16_flops": null, "training": {"gpt": []}}',
                                        "unknown training case 'gpt'"),
                                       *[('{"reduced": true, "peak_bf16_flops": null, "training": {"cifar10_unet_bf16": '
                                          f'[{{"batch": {b}, "step_s_median": {s}}}]}}}}', "positive, finite")
                                         for b, s in (("8", "0"), ("8", "-1"), ("8", "NaN"), ("0", "0.1"),
                                                      ("-2", "0.1"), ('"8"', "0.1"))]])
def test_recount_of_a_wrong_file_names_it(tmp_path, text, why):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(SystemExit, match=why) as e:
        accelerator.main(["--recount", str(bad)])
    assert str(bad) in str(e.value) and bad.read_text() == text  # refused before any write


def test_recount_of_a_missing_file_or_with_out_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not an accelerator pack result"):
        accelerator.main(["--recount", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit) as e:
        accelerator.parse_args(["--recount", "a.json", "--out", str(tmp_path / "b.json")])
    assert e.value.code == 2 and "--out does not go with it" in capsys.readouterr().err
