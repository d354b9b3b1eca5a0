"""Video metrics: SSIM against closed forms and a direct float64 re-implementation; the
video probe's features separate real from frame-shuffled, static and noise videos; identity
stability and long-video drift react to what they measure; the shipped probe is checked."""

import numpy as np
import pytest

from diffusion.metrics import video_probe
from diffusion.metrics.param_cache import cache_path, sha256_of
from diffusion.metrics.video_metrics import fvd_proxy, identity_stability, ssim, window_frame_fd
from diffusion.metrics.video_probe import video_targets

N = 300


def _direct_ssim(a, b, size=7, sigma=1.5):
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.02**2, 0.06**2
    vals = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * pa * pa).sum() - ma**2, (w * pb * pb).sum() - mb**2
            cov = (w * pa * pb).sum() - ma * mb
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_ssim_matches_closed_forms_and_a_direct_window_loop():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (3, 12, 10, 1))
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(a, b), [_direct_ssim(a[i, ..., 0], b[i, ..., 0]) for i in range(3)], rtol=1e-10)
    np.testing.assert_allclose(ssim(a, b), ssim(b, a), rtol=1e-12)
    mx, my = 0.2, -0.5  # constant images: only the luminance term is left
    const = ssim(np.full((1, 8, 8, 1), mx), np.full((1, 8, 8, 1), my))
    np.testing.assert_allclose(const, (2 * mx * my + 0.02**2) / (mx**2 + my**2 + 0.02**2), rtol=1e-12)
    with pytest.raises(ValueError, match="larger than"):
        ssim(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)))


@pytest.fixture(scope="module")
def sets():
    real_a, _ = video_targets("train", 100_000, N, 8)
    real_b, _ = video_targets("train", 200_000, N, 8)
    rng = np.random.default_rng(0)
    return {"real_a": real_a, "real_b": real_b,
            "shuffled": np.stack([v[rng.permutation(8)] for v in real_b]),
            "static": np.repeat(real_b[:, :1], 8, axis=1),
            "noise": np.clip(rng.normal(size=real_b.shape), -1, 1).astype(np.float32),
            "spliced": np.concatenate([real_b[:, :4], real_a[:, 4:]], axis=1)}


def test_the_fvd_proxy_separates_real_shuffled_static_and_noise(sets):
    d = {k: fvd_proxy(v, sets["real_a"]) for k, v in sets.items() if k != "real_a"}
    assert 2 * d["real_b"] < d["shuffled"] < d["static"] < d["noise"], d
    assert d["spliced"] > 2 * d["real_b"], d


def test_identity_stability_drops_when_frames_come_from_other_videos(sets):
    assert identity_stability(sets["spliced"]) < 0.5 * identity_stability(sets["real_b"])
    assert identity_stability(sets["noise"]) == 0.0


def test_drift_per_window_rises_where_a_long_video_degrades(sets):
    long = np.concatenate([sets["real_b"], sets["real_a"], 0.5 * sets["noise"] + 0.5 * sets["real_a"]], axis=1)
    fds = window_frame_fd(long, sets["real_a"], 8)
    assert len(fds) == 3 and max(fds[:2]) < 0.2 * fds[2], fds


def test_the_shipped_probe_is_checked_and_named_by_its_recipe():
    assert video_probe.SHIPPED.name == cache_path("video_probe", video_probe.RECIPE).name
    assert sha256_of(video_probe.SHIPPED) == video_probe.SHIPPED_SHA256
    with pytest.raises(ValueError, match="F >= 2"):
        video_probe.run_probe(np.zeros((2, 1, 16, 16, 1)))


def test_video_scores_equal_the_single_metrics(sets):
    from diffusion.metrics.video_metrics import frame_fd, video_scores

    long = np.concatenate([sets["real_b"], sets["shuffled"]], axis=1)
    got = video_scores(long, sets["real_a"], 8)
    assert got["fvd_proxy"] == pytest.approx(fvd_proxy(sets["real_b"], sets["real_a"]), rel=1e-9)
    assert got["frame_fd"] == pytest.approx(frame_fd(long, sets["real_a"]), rel=1e-9)
    assert got["identity_stability"] == identity_stability(long)
    assert got["window_frame_fd"] == pytest.approx(window_frame_fd(long, sets["real_a"], 8), rel=1e-9)
