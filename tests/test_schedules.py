"""Schedules against closed forms, for time arrays of any shape."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.schedules import CosineLogSNRSchedule, DiscreteSchedule, bcast_right, make_schedule


def test_linear_alpha_bar_is_cumprod_of_betas():
    s = make_schedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    n = np.array([1, 2, 10, 500, 999, 1000])
    got = np.asarray(s.alpha_bar(jnp.asarray(n / 1000)))
    np.testing.assert_allclose(got, ab[n - 1], rtol=1e-5)
    assert float(s.alpha_bar(jnp.zeros(()))) == 1.0


def test_scaled_linear_and_cosine_closed_forms():
    s = make_schedule("scaled_linear", 1000)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    np.testing.assert_allclose(np.asarray(s.alpha_bar(jnp.asarray(0.3))), np.prod(1 - betas[:300]), rtol=1e-5)
    c = make_schedule("cosine", 1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # alpha_bar_n = f(n/T) / f(0) exactly where no beta is clipped (all but the last steps)
    for n in [1, 100, 500, 900]:
        np.testing.assert_allclose(float(c.alpha_bar(jnp.asarray(n / 1000))), f(n / 1000) / f(0), rtol=2e-5)


def test_interpolation_between_grid_points_is_linear_in_log_alpha_bar():
    s = make_schedule("linear", 10)
    lo, hi = np.log(np.asarray(s.alpha_bar(jnp.asarray([0.3, 0.4]))))
    mid = float(jnp.log(s.alpha_bar(jnp.asarray(0.35))))
    assert mid == pytest.approx(0.5 * (lo + hi), rel=1e-5)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "cosine_logsnr"])
def test_variance_preserving_and_logsnr(name):
    s = make_schedule(name)
    t = jnp.linspace(0.01, 1.0, 50)
    a, sig = s.alpha_sigma(t)
    np.testing.assert_allclose(np.asarray(a**2 + sig**2), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s.logsnr(t)), np.log(np.asarray(a) ** 2 / np.asarray(sig) ** 2),
                               rtol=1e-3, atol=1e-3)
    assert np.all(np.diff(np.asarray(s.logsnr(t))) < 0)  # noise grows with t


@pytest.mark.parametrize("name", ["linear", "cosine_logsnr"])
def test_t_from_logsnr_inverts_logsnr(name):
    s = make_schedule(name)
    t = jnp.linspace(0.05, 0.95, 19)
    np.testing.assert_allclose(np.asarray(s.t_from_logsnr(s.logsnr(t))), np.asarray(t), atol=2e-4)


def test_cosine_logsnr_endpoints():
    s = CosineLogSNRSchedule(-20.0, 20.0)
    assert float(s.logsnr(jnp.asarray(0.0))) == pytest.approx(20.0, abs=1e-3)
    assert float(s.logsnr(jnp.asarray(1.0))) == pytest.approx(-20.0, abs=5e-3)
    # closed form: logsnr = -2 log tan(a t + b)
    b = math.atan(math.exp(-10)); a = math.atan(math.exp(10)) - b
    assert float(s.logsnr(jnp.asarray(0.3))) == pytest.approx(-2 * math.log(math.tan(a * 0.3 + b)), rel=1e-5)


@pytest.mark.parametrize("name", ["linear", "cosine", "cosine_logsnr"])
def test_time_of_shape_b_f_is_elementwise(name):
    """[B, F] per-frame times give the same values as the flattened [B*F] vector."""
    s = make_schedule(name)
    t = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (3, 5)), jnp.float32)
    a, sig = s.alpha_sigma(t)
    a_flat, sig_flat = s.alpha_sigma(t.reshape(-1))
    assert a.shape == (3, 5) and sig.shape == (3, 5)
    np.testing.assert_allclose(np.asarray(a).reshape(-1), np.asarray(a_flat), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sig).reshape(-1), np.asarray(sig_flat), rtol=1e-6)
    assert s.logsnr(t).shape == (3, 5)


def test_bcast_right():
    x = jnp.zeros((3, 5, 8, 8, 1))
    assert bcast_right(jnp.ones((3, 5)), x).shape == (3, 5, 1, 1, 1)
    assert bcast_right(jnp.ones((3,)), x).shape == (3, 1, 1, 1, 1)
    assert bcast_right(jnp.ones(()), x).shape == (1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="more axes"):
        bcast_right(jnp.ones((3, 5, 8, 8, 1, 2)), x)


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="linear, scaled_linear, cosine, cosine_logsnr"):
        make_schedule("sqrt")
    with pytest.raises(ValueError, match="unknown discrete schedule"):
        DiscreteSchedule(kind="sqrt")


def test_sigma_reading_agrees_on_training_steps_and_inverts():
    """diffusers' sigma reading of a discrete schedule (diffusion/sigma_schedule.py): equal to the
    schedule on the training steps, its own inverse between them, the base below t = 1 / T."""
    from diffusion.sigma_schedule import SigmaInterpolated

    base = make_schedule("scaled_linear")
    steps = jnp.arange(1, 1001) / 1000
    between = (jnp.arange(1, 1000) + 0.37) / 1000
    for mode in ("sigma", "log_sigma"):
        s = SigmaInterpolated(base, mode)
        np.testing.assert_allclose(np.asarray(s.alpha_bar(steps)), np.asarray(base.alpha_bar(steps)), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(s.t_from_log_alpha_bar(s.log_alpha_bar(between))), np.asarray(between),
                                   atol=2e-6)
        a, sig = s.alpha_sigma(between)
        np.testing.assert_allclose(np.asarray(a**2 + sig**2), 1.0, atol=1e-6)
        assert float(s.alpha_bar(jnp.asarray(0.0))) == 1.0
    ve = lambda sch: np.asarray(sch.alpha_sigma(between)[1] / sch.alpha_sigma(between)[0])  # noqa: E731
    lin, log = ve(SigmaInterpolated(base, "sigma")), ve(SigmaInterpolated(base, "log_sigma"))
    assert np.all(lin >= log * (1 - 1e-6))  # a chord of a convex function in log lies above it


def test_the_sigma_readings_differ_by_the_documented_7e_5():
    """docs/design/diffusers_schedulers.md: between training steps diffusers' linear-in-sigma reading and
    ours (linear in log alpha_bar) differ by up to 7e-5 in sigma / alpha (SD's betas, 50 linspace steps)."""
    from diffusion.sigma_schedule import SigmaInterpolated

    base = make_schedule("scaled_linear")
    t = (np.linspace(0, 999, 50) + 1.0) / 1000
    ve = lambda s: np.asarray(s.alpha_sigma(jnp.asarray(t))[1] / s.alpha_sigma(jnp.asarray(t))[0], np.float64)  # noqa: E731
    rel = np.max(np.abs(ve(base) / ve(SigmaInterpolated(base, "sigma")) - 1))
    assert 5e-5 < rel < 1e-4, rel
