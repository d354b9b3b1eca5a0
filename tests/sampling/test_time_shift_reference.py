"""TS-DPM against an independent float64 NumPy re-implementation (DDIM on the exact
Gaussian-mixture denoiser), in both modes, and the cutoff on integer training steps."""

import jax
import numpy as np
import pytest

from diffusion.analytic import make_mixture
from diffusion.schedules import make_schedule
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import DDIM
from sampling.transforms import TimeShift

SCHED = make_schedule("linear")
T = 1000
D = 16  # elements per sample: ddof = 0 vs 1 changes the variance by 1/D
MIX = make_mixture(SCHED, np.stack([np.linspace(-0.8, 0.8, D), np.linspace(0.6, -0.2, D)]), [0.3, 0.5])
ALPHA_BAR = np.exp(SCHED.table)  # float64, n = 0..T


def np_x0(x, n):
    """float64 posterior mean of the mixture at ``x [B, D]``, integer steps ``n [B]``."""
    a, s2 = np.sqrt(ALPHA_BAR[n])[:, None], (1 - ALPHA_BAR[n])[:, None]
    means, var0 = np.asarray(MIX.means, np.float64), np.asarray(MIX.stds, np.float64) ** 2
    weights = np.asarray(MIX.weights, np.float64) / float(np.sum(MIX.weights))
    var = a**2 * var0[None] + s2  # [B, K]
    diff = x[:, None, :] - a[:, :, None] * means[None]
    logits = np.log(weights)[None] - 0.5 * D * np.log(var) - 0.5 * (diff**2).sum(-1) / var
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return np.einsum("bk,bkd->bd", r, means[None] + (a * var0[None] / var)[:, :, None] * diff)


def np_ddim(x, n_from, n_to):
    x0 = np_x0(x, n_from)
    a_t, s_t = np.sqrt(ALPHA_BAR[n_from])[:, None], np.sqrt(1 - ALPHA_BAR[n_from])[:, None]
    eps = (x - a_t * x0) / s_t
    return np.sqrt(ALPHA_BAR[n_to])[:, None] * x0 + np.sqrt(1 - ALPHA_BAR[n_to])[:, None] * eps


def np_closest(x, center: int, window: float):
    """The step within ``|n - center| <= window // 2`` whose ``1 - alpha_bar`` is nearest
    each sample's unbiased variance."""
    var = np.var(x, axis=1, ddof=1)
    n = np.arange(max(0, center - int(window // 2)), min(T, center + int(window // 2)) + 1)
    return n[np.argmin((var[:, None] - (1 - ALPHA_BAR[n])[None]) ** 2, axis=1)]


def np_time_shift(x_T, steps, window, cutoff, mode):
    x, b = np.asarray(x_T, np.float64), x_T.shape[0]
    shifted = None
    for k in range(len(steps) - 1):
        t, t_next = steps[k], steps[k + 1]
        if mode == "query":
            query = shifted if (shifted is not None and t > cutoff) else np.full(b, t)
            x = np_ddim(x, query, np.full(b, t_next))
            shifted = np_closest(x, t_next, window) if t_next > 0 else None
        else:
            dest = np_closest(x, t_next, window) if (k > 0 and t_next > cutoff) else np.full(b, t_next)
            x = np_ddim(x, np.full(b, t), dest)
    return x


@pytest.mark.parametrize("mode", ["query", "destination"])
@pytest.mark.parametrize("grid_kind,steps,window,cutoff", [("uniform", 10, 40.0, 300.0), ("trailing", 20, 80.0, 550.0)])
def test_matches_the_float64_reimplementation(mode, grid_kind, steps, window, cutoff):
    x_T = jax.random.normal(jax.random.PRNGKey(0), (32, D))
    grid = make_grid(grid_kind, steps, SCHED)
    got = sample(MIX, None, TimeShift(DDIM(SCHED, 0.0), window, cutoff, mode), grid, x_T)
    want = np_time_shift(np.asarray(x_T), np.rint(np.asarray(grid, np.float64) * T).astype(int), window, cutoff, mode)
    plain = sample(MIX, None, DDIM(SCHED, 0.0), grid, x_T)
    assert np.abs(np.asarray(plain) - want).max() > 1e-2  # the shift matters here
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


@pytest.mark.parametrize("mode,steps", [("query", 10), ("destination", 20)])
def test_the_cutoff_compares_training_steps(mode, steps):
    """On trailing grids t = 0.9 is 900.00006 steps in float32; with cutoff 900 it must not
    count as above it. Query mode first queries a shifted time at grid point 1 (900 on the
    10-step grid), destination mode first shifts a destination at step 1 (900 on the
    20-step grid): with cutoff 900 both equal plain DDIM, with 899 both shift."""
    grid = make_grid("trailing", steps, SCHED)
    assert float(grid[steps // 10] * T) > 900.0  # the float time sits a hair above its step
    x_T = jax.random.normal(jax.random.PRNGKey(1), (16, D))
    plain = sample(MIX, None, DDIM(SCHED, 0.0), grid, x_T)
    at_900 = sample(MIX, None, TimeShift(DDIM(SCHED, 0.0), 200.0, 900.0, mode), grid, x_T)
    np.testing.assert_array_equal(np.asarray(at_900), np.asarray(plain))
    below = sample(MIX, None, TimeShift(DDIM(SCHED, 0.0), 200.0, 899.0, mode), grid, x_T)
    assert np.abs(np.asarray(below) - np.asarray(plain)).max() > 1e-3
