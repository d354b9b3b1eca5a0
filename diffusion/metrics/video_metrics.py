"""Video metrics on moving digits (issue 12), in the features of the video probe
(``video_probe.py``), and SSIM.

* ``fvd_proxy``: Frechet distance between the probe's video features of two sets (an
  FVD-style distance: it sees motion).
* ``frame_fd``: Frechet distance between the probe's per-frame features of all frames of
  two sets (per-frame quality, blind to order).
* ``identity_stability``: the fraction of videos whose per-frame digit set (the probe's
  multi-label head, ``p > 0.5``) is non-empty and the same in every frame. The 8x8 digits
  classifier cannot read a 16x16 canvas holding two digits at any position, so the probe
  reads the identities.
* ``ssim`` (and ``psnr.py``'s PSNR) for image-to-video and interpolation against the
  ground-truth continuation.
* ``window_frame_fd``: ``frame_fd`` of each window of a long video against real frames:
  quality drift.
"""

from __future__ import annotations

import numpy as np

from diffusion.metrics.frechet import feature_stats, frechet_distance
from diffusion.metrics.video_probe import run_probe


def _fd(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def fvd_proxy(videos: np.ndarray, reference: np.ndarray) -> float:
    """Frechet distance of the probe's video features, ``[N, F, 16, 16, 1]`` sets."""
    return _fd(run_probe(videos)[2], run_probe(reference)[2])


def frame_fd(videos: np.ndarray, reference: np.ndarray) -> float:
    """Frechet distance of the probe's per-frame features over every frame of each set."""
    a, b = run_probe(videos)[1], run_probe(reference)[1]
    return _fd(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))


def identity_stability(videos: np.ndarray) -> float:
    """Fraction of videos whose predicted digit set is non-empty and constant over frames."""
    present = run_probe(videos)[0]["digits"] > 0.0  # [N, F, 10] (logit > 0: p > 0.5)
    same = (present == present[:, :1]).all(axis=(1, 2))
    return float(np.mean(same & present[:, 0].any(axis=-1)))


def window_frame_fd(videos: np.ndarray, reference_frames: np.ndarray, window: int) -> list[float]:
    """``frame_fd`` of frames ``[w * window, (w + 1) * window)`` of every video, for each
    whole window ``w``, against ``reference_frames`` (real videos): drift over a long video."""
    feats = run_probe(videos)[1]
    ref = run_probe(reference_frames)[1]
    ref = ref.reshape(-1, ref.shape[-1])
    out = []
    for start in range(0, feats.shape[1] - window + 1, window):
        chunk = feats[:, start:start + window]
        out.append(_fd(chunk.reshape(-1, chunk.shape[-1]), ref))
    return out


def video_scores(videos: np.ndarray, reference: np.ndarray, window: int) -> dict:
    """The FVD proxy of the first ``window`` frames, per-frame FD over all frames and
    identity stability of ``videos`` against ``reference`` (``[M, window, ...]``), and the
    per-window FD when the videos hold two windows or more, from one probe pass per set
    (what ``fvd_proxy``, ``frame_fd``, ``identity_stability`` and ``window_frame_fd`` give)."""
    heads, frames, video = run_probe(videos)
    _, ref_frames, ref_video = run_probe(reference)
    if videos.shape[1] != window:  # the FVD proxy reads one window
        video = run_probe(videos[:, :window])[2]
    ref_flat = ref_frames.reshape(-1, ref_frames.shape[-1])
    present = heads["digits"] > 0.0
    out = {"fvd_proxy": _fd(video, ref_video), "frame_fd": _fd(frames.reshape(-1, frames.shape[-1]), ref_flat),
           "identity_stability": float(np.mean((present == present[:, :1]).all(axis=(1, 2))
                                               & present[:, 0].any(axis=-1)))}
    if videos.shape[1] >= 2 * window:
        out["window_frame_fd"] = [_fd(frames[:, s:s + window].reshape(-1, frames.shape[-1]), ref_flat)
                                  for s in range(0, frames.shape[1] - window + 1, window)]
    return out


def ssim(images: np.ndarray, reference: np.ndarray, size: int = 7, sigma: float = 1.5) -> np.ndarray:
    """``[N]`` mean SSIM (Wang et al. 2004, constants ``K1 = 0.01, K2 = 0.03``, data range
    2) of images ``[N, H, W, C]`` in ``[-1, 1]`` (clipped) against references, with a
    ``size`` x ``size`` Gaussian window (valid positions only; channels averaged)."""
    a = np.clip(np.asarray(images, np.float64), -1.0, 1.0)
    b = np.clip(np.asarray(reference, np.float64), -1.0, 1.0)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs images and references of one shape [N, H, W, C], got {a.shape} and {b.shape}")
    if min(a.shape[1:3]) < size:
        raise ValueError(f"ssim's {size}x{size} window is larger than the {a.shape[1]}x{a.shape[2]} images")
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    g /= g.sum()

    def blur(x):  # separable valid convolution over H and W
        x = np.lib.stride_tricks.sliding_window_view(x, size, axis=1) @ g
        return np.lib.stride_tricks.sliding_window_view(x, size, axis=2) @ g

    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3))
