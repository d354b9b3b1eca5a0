"""FID Inception parity with pytorch-fid 0.3.0 (``InceptionV3([3])``, ``use_fid_inception=True``).

Its weights file cannot be downloaded here, so pytorch-fid's network is built with random
weights and BatchNorm statistics in its own process (``tests/metrics/fid_reference.py``, which
says why); the state dict it saves, the ``.pth`` pytorch-fid reads, goes through
``load_inception``. Features must match torch's for images smaller and larger than 299 (the
resize runs both ways), the resize alone torch's ``interpolate`` to 1e-6, FID pytorch-fid's
``calculate_frechet_distance``.
"""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffusion.convert.inception import convert_inception  # noqa: E402
from diffusion.convert.invert import invert  # noqa: E402
from diffusion.convert.tensors import ConversionError  # noqa: E402
from diffusion.metrics.fid import (WEIGHTS_FILE, fid_from_features, fid_from_stats, inception_features,  # noqa: E402
                                   load_inception, load_stats, save_stats)
from diffusion.metrics.frechet import feature_stats  # noqa: E402
from diffusion.nn.inception import resize_bilinear  # noqa: E402
from tests.metrics.fid_reference import ROOT, TARGET  # noqa: E402

SIZES = {"small": (64, 64), "large": (320, 320)}


def _feature_sets():
    rng = np.random.default_rng(2)
    return rng.normal(size=(300, 16)), 0.5 + rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) / 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``(pytorch-fid's outputs, its weights file, our params, the images)``."""
    if not (TARGET / "pytorch_fid").is_dir():
        pytest.skip(f"pytorch-fid is not in {TARGET}: run the README's test command, which installs it there")
    out = tmp_path_factory.mktemp("inception")
    images = {k: np.random.default_rng(h).uniform(size=(2, h, w, 3)).astype(np.float32) for k, (h, w) in SIZES.items()}
    np.savez(out / "images.npz", **images)
    a, b = _feature_sets()
    np.savez(out / "features.npz", a=a, b=b)
    proc = subprocess.run([sys.executable, "-m", "tests.metrics.fid_reference", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out / "reference.npz") as f:
        want = {k: f[k] for k in f.files}
    path = out / WEIGHTS_FILE
    return want, path, load_inception(path), images


@pytest.mark.parametrize("size", sorted(SIZES))
def test_features_match_pytorch_fid(reference, size):
    want, _, params, images = reference
    got = inception_features(params, images[size], batch_size=2)
    assert got.shape == (2, 2048) and got.dtype == np.float64
    scale = np.abs(want[size]).max()
    assert 0.1 < scale < 100, scale  # the random network neither vanishes nor explodes
    err = np.abs(got - want[size]).max() / scale
    assert err <= 1e-5, f"max |diff| / max |feature| = {err:.2e}"  # 3.5e-7 measured; a pooling or BN eps slip: >1e-2


@pytest.mark.parametrize("shape,size", [((64, 64), (299, 299)), ((320, 333), (299, 299)), ((17, 300), (40, 11))])
def test_resize_matches_torch_interpolate(shape, size):
    """Up- and downsampling, on each axis: no antialiasing (``jax.image.resize`` would blur)."""
    x = np.random.default_rng(1).uniform(size=(1, *shape, 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), size=size,
                                           mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(resize_bilinear(x, size))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_fid_matches_pytorch_fid(reference):
    a, b = _feature_sets()
    ours = fid_from_features(a, b)
    assert ours == pytest.approx(float(reference[0]["fid"]), rel=1e-9)
    assert fid_from_stats(feature_stats(a), feature_stats(b)) == ours
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)


def test_stats_round_trip_and_errors(tmp_path):
    mu, sigma = feature_stats(np.random.default_rng(3).normal(size=(20, 5)))
    path = tmp_path / "ref.npz"
    save_stats(path, mu, sigma)
    save_stats(path, mu, sigma)  # replaces
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # no temporary file left behind
    got = load_stats(path)
    assert np.array_equal(got[0], mu) and np.array_equal(got[1], sigma)
    np.savez_compressed(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)  # pytorch-fid's --save-stats
    assert np.array_equal(load_stats(tmp_path / "pytorch_fid.npz")[1], sigma)

    np.savez(tmp_path / "no_sigma.npz", mu=mu)
    np.savez(tmp_path / "mismatch.npz", mu=mu, sigma=sigma[:4, :4])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name, error, match in [("no_sigma.npz", ValueError, "has no sigma"), ("mismatch.npz", ValueError, r"\[D, D\]"),
                               ("junk.npz", ValueError, "not a readable"), ("absent.npz", FileNotFoundError, "absent")]:
        with pytest.raises(error, match=match) as info:
            load_stats(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"\[D, D\]"):
        save_stats(tmp_path / "bad.npz", mu, sigma[:, :2])


def test_weights_file_errors_are_one_line(reference, tmp_path):
    _, path, _, _ = reference
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE) as info:
        load_inception(tmp_path / "nowhere.pth")
    assert "\n" not in str(info.value)
    data = path.read_bytes()
    for name, content in [("truncated.pth", data[: len(data) // 2]), ("garbage.pth", bytes(range(256)) * 4),
                          ("empty.pth", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConversionError, match=name) as info:
            load_inception(tmp_path / name)
        assert "\n" not in str(info.value), str(info.value)


def test_converter_names_missing_unexpected_and_misshaped_tensors(reference):
    _, path, _, _ = reference
    good = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    key = "Mixed_6b.branch7x7_2.conv.weight"
    cases = [({k: v for k, v in good.items() if k != key}, f"missing tensor '{key}'"),
             ({**good, "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)}, "AuxLogits.fc.weight"),
             ({**good, key: good[key][:, :, :, :5]}, rf"'{key}' has shape \(128, 128, 1, 5\)"),
             ({**good, "Mixed_7c.bn.running_var": np.ones(3, np.float32)}, "Mixed_7c.bn.running_var"),
             ({**good, "fc.weight": np.zeros((1000, 2048), np.float32)}, "1008 classes")]
    for tensors, match in cases:
        with pytest.raises(ConversionError, match=match):
            convert_inception(tensors, "test")


def test_converter_only_moves_numbers(reference):
    """``diffusion.convert.invert`` maps the params back onto the very state dict (less the unused
    fc head and BN counters): BatchNorm stays as statistics, nothing is folded."""
    _, path, params, _ = reference
    state = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    back = invert(lambda t: convert_inception(t, "probe"), {k: v.shape for k, v in state.items()}, params, "test")
    assert sorted(set(state) - set(back)) == sorted(k for k in state if k.startswith("fc.") or
                                                    k.endswith("num_batches_tracked"))
    assert all(np.array_equal(back[k], state[k]) for k in back)
