"""Classifier-free guidance and the time-shift sampler as transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.analytic import make_mixture
from diffusion.schedules import make_schedule
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import DDIM
from sampling.transforms import Guided, TimeShift
from sampling.transforms.time_shift import closest_time, sample_variance
from tests.sampling.toys import LabelMeans, make_solver, solver_names, stateless

SCHED = make_schedule("linear")
MEANS = jnp.array([[0.5, 0.5], [-0.5, 0.2]])


def test_guidance_closed_form_and_one_batched_call():
    seen = []

    class Spy(LabelMeans):
        def __call__(self, params, x_t, t, cond=None, **kw):
            seen.append(x_t.shape)
            return super().__call__(params, x_t, t, cond, **kw)

    den = Spy(SCHED, MEANS)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    labels = jnp.array([0, 1, 1, 0])
    for w in (0.0, 1.0, 3.0):
        seen.clear()
        pred, _ = Guided(den, w, null_label=2)(None, x, jnp.asarray(0.5), {"label": labels})
        assert seen == [(8, 2)]  # conditional + unconditional in one call
        np.testing.assert_allclose(np.asarray(pred.x0), w * np.asarray(MEANS)[np.asarray(labels)], atol=1e-6)
        a, s = SCHED.alpha_sigma(jnp.asarray(0.5))
        np.testing.assert_allclose(np.asarray(a * pred.x0 + s * pred.eps), np.asarray(x), atol=1e-5)


def test_guidance_needs_labels():
    with pytest.raises(ValueError, match="class-conditional"):
        Guided(LabelMeans(SCHED, MEANS), 2.0)(None, jnp.ones((2, 2)), jnp.asarray(0.5), None)


def test_closest_time_is_the_windowed_argmin():
    rng = np.random.default_rng(0)
    var = jnp.asarray(rng.uniform(0.05, 1.0, 16), jnp.float32)
    center = jnp.asarray(rng.integers(50, 950, 16) / 1000, jnp.float32)
    for window in (0.0, 5.0, 30.0, 80.0):
        got = np.asarray(closest_time(SCHED, var, center, window)) * 1000
        noise = 1 - np.asarray(SCHED.alpha_bar(jnp.arange(1001) / 1000))
        for b in range(16):
            c = int(round(float(center[b]) * 1000))
            cand = np.arange(max(0, c - int(window // 2)), min(1000, c + int(window // 2)) + 1)
            best = cand[np.argmin((float(var[b]) - noise[cand]) ** 2)]
            assert got[b] == pytest.approx(best, abs=1e-3)


@pytest.mark.parametrize("mode", ["query", "destination"])
@pytest.mark.parametrize("name", solver_names())
def test_zero_window_or_high_cutoff_is_the_plain_solver(mode, name):
    mix = make_mixture(SCHED, [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2])
    x_T = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    grid = make_grid("uniform", 10, SCHED)
    base = make_solver(name, SCHED)
    plain = sample(mix, None, base, grid, x_T, None, jax.random.PRNGKey(1))
    for window, cutoff in [(0.0, 0.0), (40.0, 1000.0)]:
        shifted = sample(mix, None, TimeShift(base, window, cutoff, mode), grid, x_T, None, jax.random.PRNGKey(1))
        np.testing.assert_allclose(np.asarray(shifted), np.asarray(plain), rtol=1e-5, atol=1e-5)
    moved = sample(mix, None, TimeShift(base, 40.0, 0.0, mode), grid, x_T, None, jax.random.PRNGKey(1))
    assert np.abs(np.asarray(moved) - np.asarray(plain)).max() > 1e-4


def test_shift_follows_each_samples_variance():
    """A sample whose variance is too high for the next time is given a noisier time."""

    def run(x):
        solver = TimeShift(DDIM(SCHED, 0.0), 400.0, 0.0)
        mix = make_mixture(SCHED, [[0.0] * 1024], [0.5])
        st = solver.init(x, jax.random.PRNGKey(0))
        model = stateless(lambda x, t: mix(None, x, t)[0])  # noqa: E731
        return solver.step(st, model, jnp.asarray(0.6), jnp.asarray(0.5)).aux["shifted"]

    # after the step the variances are ~0.7 and ~0.9: inside the window's range of 1 - alpha_bar
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 1024)) * jnp.array([[0.86], [0.98]])
    s = np.asarray(run(x))
    nominal_var = 1 - float(SCHED.alpha_bar(jnp.asarray(0.5)))
    assert s[1] > s[0]  # the over-dispersed sample is placed later in the noise
    assert abs(s[0] - 0.5) <= 0.2 and abs(s[1] - 0.5) < 0.2  # inside the window, not at its edge
    assert float(sample_variance(x)[1]) > float(sample_variance(x)[0])
    assert 0.3 < nominal_var


@pytest.mark.parametrize("name", solver_names())
def test_time_shift_composes_with_guidance_and_every_solver(name):
    den = LabelMeans(SCHED, MEANS)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    cond = {"label": jnp.array([0, 1, 0, 1])}
    out = sample(Guided(den, 2.0, null_label=2), None, TimeShift(make_solver(name, SCHED), 20.0, 300.0),
                 make_grid("uniform", 10, SCHED), x_T, cond, jax.random.PRNGKey(1))
    # every sample lands on its guided target w * mean[label]. With an x0-constant model
    # the noise estimate is constant along an unshifted path, so PNDM is exact without the
    # shift; shifted query times make it vary, and PNDM's extrapolation of it is then only
    # close (F-PNDM: 0.07 here at 10 steps with a 20-step window).
    tol = 0.1 if "pndm" in name else 1e-3
    np.testing.assert_allclose(np.asarray(out), 2.0 * np.asarray(MEANS)[[0, 1, 0, 1]], atol=tol)


def test_unknown_mode():
    with pytest.raises(ValueError, match="time-shift mode"):
        TimeShift(DDIM(SCHED), 5.0, 5.0, "both").init(jnp.ones((1, 2)), jax.random.PRNGKey(0))
