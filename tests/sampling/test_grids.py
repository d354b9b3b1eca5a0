"""Time grids."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.schedules import make_schedule
from sampling.grids import GRIDS, make_grid

SCHED = make_schedule("linear")


def test_uniform_is_the_ddim_skip_grid():
    g = np.asarray(make_grid("uniform", 10, SCHED)) * 1000
    np.testing.assert_allclose(g, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0], atol=1e-3)


def test_trailing_starts_at_pure_noise():
    g = np.asarray(make_grid("trailing", 4, SCHED)) * 1000
    np.testing.assert_allclose(g, [1000, 750, 500, 250, 0], atol=1e-3)


def test_quadratic_is_dense_near_the_data():
    g = np.asarray(make_grid("quadratic", 10, SCHED)) * 1000
    steps = (np.linspace(0, np.sqrt(800), 10) ** 2).astype(int)[::-1] + 1
    np.testing.assert_allclose(g[:-1], steps, atol=1e-3)
    assert np.all(np.diff(np.diff(g[:-1])) > 0)  # gaps shrink towards t = 0


def test_logsnr_grid_is_uniform_in_logsnr():
    g = make_grid("logsnr", 8, SCHED)
    lam = np.asarray(SCHED.logsnr(g[:-1]))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=2e-3)
    assert float(g[0]) == pytest.approx(1.0) and float(g[-2]) == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.parametrize("n", [1, 10, 25, 50, 999])
def test_leading_is_stable_diffusions_ddim_grid(n):
    """diffusers' DDIMScheduler as SD 1.x / 2.x configure it: timesteps k are our t = (k + 1) / T,
    and the last step goes to alphas_cumprod[0], our t = 1 / T."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    sched.set_timesteps(n)
    ours = make_schedule("scaled_linear", 1000)
    g = np.asarray(make_grid("leading", n, ours), np.float64)
    np.testing.assert_allclose(g[:-1] * 1000 - 1, sched.timesteps.numpy(), atol=1e-3)
    assert g[-1] * 1000 == pytest.approx(1.0)
    np.testing.assert_allclose(np.asarray(ours.alpha_bar(make_grid("leading", n, ours))),
                               np.r_[sched.alphas_cumprod.numpy()[sched.timesteps.numpy()], sched.final_alpha_cumprod],
                               rtol=2e-5)


def test_leading_refuses_a_grid_past_t_1():
    with pytest.raises(ValueError, match="starts past t = 1"):
        make_grid("leading", 1000, SCHED)


@pytest.mark.parametrize("kind", GRIDS)
def test_every_grid_decreases_to_zero(kind):
    """... or, for ``leading`` (Stable Diffusion's schedulers), to one training step."""
    for n in (1, 5, 50):
        g = np.asarray(make_grid(kind, n, SCHED))
        end = 1e-3 if kind == "leading" else 0.0
        assert g.shape == (n + 1,) and g[-1] == np.float32(end) and np.all(np.diff(g) < 0) and g[0] <= 1.0


def test_bad_grids_are_clear_errors():
    with pytest.raises(ValueError, match="unknown time grid"):
        make_grid("fancy", 10, SCHED)
    with pytest.raises(ValueError, match="exceed"):
        make_grid("uniform", 2000, SCHED)
    with pytest.raises(ValueError, match="at least 1"):
        make_grid("uniform", 0, SCHED)
    assert make_grid("trailing", 3, make_schedule("cosine_logsnr")).dtype == jnp.float32
