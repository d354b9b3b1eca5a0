"""TiUE's losses against closed forms and float64 recomputations (distill/tiue.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.analytic import make_mixture
from distill.tiue import drop_cond, lattice_times, noise_kl, vsd_loss
from tests.distill.test_losses import SCHEDULE, np_alpha_sigma

MU_T, MU_S, STD = np.array([1.0, -0.5, 0.3]), np.array([-0.2, 0.4, 0.9]), 0.3


def test_the_vsd_gradient_moves_samples_toward_the_teacher_as_the_gaussian_closed_form_says():
    """Teacher N(mu_T, s^2), fake score N(mu_S, s^2) (exact denoisers): for every x_t,
    eps_T - eps_S = -(alpha / sigma)(1 - alpha^2 s^2 / v)(mu_T - mu_S), v = alpha^2 s^2 +
    sigma^2, so the loss's gradient in x0_hat is g / size with
    -g = sigma alpha (1 - alpha^2 s^2 / v)(mu_T - mu_S): a step toward the teacher's mean."""
    teacher, fake = make_mixture(SCHEDULE, [MU_T], STD), make_mixture(SCHEDULE, [MU_S], STD)
    b = 16
    x0 = jax.random.normal(jax.random.PRNGKey(0), (b, 3))
    t = lattice_times(jax.random.PRNGKey(1), b, 0.02, 0.98, SCHEDULE.T)
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    x_t = alpha[:, None] * x0 + sigma[:, None] * jax.random.normal(jax.random.PRNGKey(2), (b, 3))
    eps_t, eps_s = teacher(None, x_t, t)[0].eps, fake(None, x_t, t)[0].eps
    grad = jax.grad(lambda x: vsd_loss(x, eps_t, eps_s, sigma))(x0) * x0.size

    a, s = np_alpha_sigma(np.asarray(t))
    v = a**2 * STD**2 + s**2
    want = -(s * a * (1 - a**2 * STD**2 / v)) * (MU_T - MU_S)[None]  # = g
    np.testing.assert_allclose(grad, want, rtol=2e-3, atol=1e-5)
    step = -np.asarray(grad)
    cos = step @ (MU_T - MU_S) / np.linalg.norm(step, axis=1) / np.linalg.norm(MU_T - MU_S)
    assert np.all(cos > 0.999)
    # the loss's value is 0.5 mean(g^2) and it vanishes when the fake score is the teacher
    np.testing.assert_allclose(vsd_loss(x0, eps_t, eps_s, sigma), 0.5 * np.mean(want**2), rtol=5e-3)
    assert float(vsd_loss(x0, eps_t, eps_t, sigma)) == 0.0


def test_noise_kl_is_the_gaussian_kl_of_each_maps_moments():
    maps = np.random.default_rng(0).normal(0.3, 1.7, (3, 4, 2, 2, 1)) + np.arange(4)[None, :, None, None, None]
    flat = maps.reshape(3, 4, -1).astype(np.float64)
    mu, var = flat.mean(-1), flat.var(-1)
    want = (0.5 * (mu**2 + var - 1 - np.log(var))).sum(0).mean()
    np.testing.assert_allclose(noise_kl(jnp.asarray(maps, jnp.float32)), want, rtol=1e-5)
    # zero at zero-mean unit-variance maps; its gradient pulls a map's mean to zero
    unit = np.array([-1.0, 1.0, -1.0, 1.0]).reshape(1, 1, 2, 2, 1)
    assert abs(float(noise_kl(jnp.asarray(unit)))) < 1e-7
    g = jax.grad(noise_kl)(jnp.asarray(unit + 0.5))
    assert np.all(np.asarray(g) > 0)


def test_lattice_times_and_condition_dropout():
    t = np.asarray(lattice_times(jax.random.PRNGKey(0), 4000, 0.02, 0.98, 1000))
    n = np.round(t * 1000)
    np.testing.assert_allclose(t * 1000, n, atol=1e-3)
    assert n.min() == 20 and n.max() == 980
    cond = {"label": jnp.array([1, 2, 3]), "context": jnp.ones((3, 2, 4)), "null_context": jnp.zeros((3, 2, 4))}
    out = drop_cond(cond, 10, jnp.array([True, False, True]))
    np.testing.assert_array_equal(out["label"], [10, 2, 10])
    np.testing.assert_array_equal(out["context"][:, 0, 0], [0, 1, 0])


@pytest.mark.parametrize("change, match", [
    ({"objective": "nope"}, "unknown distill.objective"), ({"steps": 0}, "steps must be >= 1"),
    ({"t_min": 0.5, "t_max": 0.4}, "t_min < distill.t_max"), ({"kl_weight": -1.0}, "kl_weight must be >= 0"),
    ({"kl_weight": float("nan")}, "kl_weight must be >= 0"), ({"fake_lr": 0.0}, "fake_lr > 0"),
    ({"fake_lr": float("nan")}, "fake_lr > 0"), ({"guidance": float("nan")}, "guidance >= 0"),
    ({"t_min": float("nan")}, "t_min < distill.t_max"), ({"steps": -2}, "steps must be >= 1"),
    ({"guidance": 3.0, "num_classes": None}, "needs a class- or text-conditional teacher")])
def test_bad_settings_are_named(change, match):
    from diffusion.nn.denoiser import Denoiser
    from diffusion.nn.unet import UNet
    from distill.tiue import tiue_distillation

    den = Denoiser(UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), out_channels=1),
                   SCHEDULE)
    kwargs = {"num_classes": 10, **change}
    with pytest.raises(ValueError, match=match):
        tiue_distillation(den, den, **kwargs)
    with pytest.raises(ValueError, match="encode/decode split"):
        tiue_distillation(make_mixture(SCHEDULE, [MU_T], STD), make_mixture(SCHEDULE, [MU_T], STD), num_classes=10)
    video = Denoiser(UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), out_channels=1,
                          temporal=True), SCHEDULE)
    with pytest.raises(ValueError, match="image model; this teacher is a video UNet"):
        tiue_distillation(video, video, num_classes=10)


def test_the_regression_baseline_targets_the_guided_teachers_k_step_ddim_sample():
    """objective=regress: the loss is the mean squared gap between the loop-free student's x0
    and the guided teacher's own K-step DDIM sample from the same x_T (hand-rolled here)."""
    from diffusion.nn.denoiser import Denoiser
    from distill.tiue import tiue_distillation
    from sampling.grids import make_grid
    from sampling.loopfree import loopfree_chain
    from sampling.solvers.ddim import ddim_update
    from tests.sampling.test_loopfree import NET, PARAMS, SCHED, noisy

    den = Denoiser(NET, SCHED, "v")
    student = noisy(PARAMS, key=9)
    method = tiue_distillation(den, den, steps=3, guidance=2.0, objective="regress", num_classes=3)
    state = type("S", (), {"extra": method.init_extra(student, PARAMS)})()
    labels = jnp.array([0, 1, 2, 1])
    batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": labels}
    key = jax.random.PRNGKey(4)
    loss, aux = method.loss_fn(student, batch, key, state)
    x_T = jax.random.normal(jax.random.split(key, 4)[0], (4, 8, 8, 1))
    grid = make_grid("trailing", 3, SCHED)
    x = x_T
    for k in range(3):
        c = den(PARAMS, x, grid[k], {"label": labels})[0]
        u = den(PARAMS, x, grid[k], {"label": jnp.full_like(labels, 3)})[0]
        (a_t, s_t), (a_s, s_s) = SCHED.alpha_sigma(grid[k]), SCHED.alpha_sigma(grid[k + 1])
        x = ddim_update(u.x0 + 2.0 * (c.x0 - u.x0), u.eps + 2.0 * (c.eps - u.eps), a_s, s_s, a_t, s_t, 0.0,
                        jnp.zeros_like(x))
    x0_hat = loopfree_chain(den, student, grid, x_T, {"label": labels})[0]
    want = np.mean(np.square(np.asarray(x0_hat, np.float64) - np.asarray(x, np.float64)))
    assert float(aux["distill_loss"]) == pytest.approx(want, rel=1e-4) and want > 1e-4
