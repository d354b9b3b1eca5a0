"""Distillation losses against hand-computed cases on the analytic Gaussian-mixture oracle.

The oracle is an exact denoiser, so a teacher's DDIM steps can be recomputed in float64
NumPy, independently of the code under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from diffusion.analytic import make_mixture
from diffusion.contract import Stateless
from diffusion.schedules import make_schedule
from diffusion.train.state import TrainState
from distill.consistency import ConsistencyFunction, boundary_coefficients, consistency_distillation
from distill.progressive import distillation_target, progressive_distillation, students_steps
from sampling.grids import make_grid, trailing_time

SCHEDULE = make_schedule("linear", 1000)


@struct.dataclass
class ScaledOracle(Stateless):
    """The oracle whose x0 is scaled by ``params`` (a scalar): params 1 is exact."""

    mixture: object

    @property
    def schedule(self):
        return self.mixture.schedule

    def __call__(self, params, x_t, t, cond=None, **_):
        pred, _ = self.mixture(None, x_t, t)
        x0 = pred.x0 * params
        t = jnp.broadcast_to(t, x_t.shape[:1])
        a, s = (v[:, None] for v in self.schedule.alpha_sigma(t))
        return type(pred)(x0=x0, eps=(x_t - a * x0) / jnp.maximum(s, 1e-6)), {}


def mixture():
    return make_mixture(SCHEDULE, [[1.0, -0.5, 0.3], [-0.8, 0.6, -0.2]], [0.15, 0.3])


def np_oracle_x0(mix, x, t):
    """float64 posterior mean of the mixture at ``x [B, D]``, ``t [B]``."""
    lab = np.asarray(SCHEDULE.log_alpha_bar(jnp.asarray(t)), np.float64)
    a, s2 = np.exp(0.5 * lab)[:, None], -np.expm1(lab)[:, None]
    means, var0 = np.asarray(mix.means, np.float64), np.asarray(mix.stds, np.float64) ** 2
    var = a**2 * var0[None] + s2
    diff = x[:, None, :] - a[:, :, None] * means[None]
    logits = -0.5 * x.shape[1] * np.log(var) - 0.5 * (diff**2).sum(-1) / var
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return np.einsum("bk,bkd->bd", r, means[None] + (a * var0[None] / var)[:, :, None] * diff)


def np_alpha_sigma(t):
    lab = np.asarray(SCHEDULE.log_alpha_bar(jnp.asarray(t)), np.float64)
    return np.exp(0.5 * lab)[:, None], np.sqrt(-np.expm1(lab))[:, None]


def np_ddim(mix, x, t, s):
    x0 = np_oracle_x0(mix, x, t)
    a_t, s_t = np_alpha_sigma(t)
    a_s, s_s = np_alpha_sigma(s)
    eps = (x - a_t * x0) / s_t
    return a_s * x0 + s_s * eps


def state_with(extra, params=1.0, step=0):
    z = jnp.zeros((), jnp.int32)
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, ema_params=params, opt_state=None,
                      rng=jax.random.PRNGKey(0), skipped=z, consecutive_skipped=z, extra=extra)


def test_trailing_time_matches_make_grid_and_nests():
    for n in (1, 2, 4, 16, 64, 128, 240):
        grid = np.asarray(make_grid("trailing", n, SCHEDULE))
        np.testing.assert_array_equal(np.asarray(trailing_time(np.arange(n + 1), n, 1000)), grid)
        fine = np.asarray(make_grid("trailing", 2 * n, SCHEDULE))
        np.testing.assert_array_equal(fine[::2], grid)  # the student's grid is every other teacher point


def test_students_steps_and_bad_settings():
    assert students_steps(128, 7) == [64, 32, 16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match="power of two"):
        students_steps(96, 2)
    with pytest.raises(ValueError, match="below 1 step"):
        students_steps(8, 4)


def test_target_makes_one_ddim_step_land_on_two_teacher_steps():
    """With the exact teacher, one DDIM step from z_t with x~ lands on the two-step
    teacher output z'' (float64 reference), for every step of a 4-step student."""
    mix = mixture()
    rng = np.random.default_rng(0)
    n = 4
    for j in range(n):
        t, t_mid, s = (float(trailing_time(2 * j + k, 2 * n, 1000)) for k in range(3))
        x = rng.normal(size=(6, 3))
        tt = np.full(6, t)
        z2 = np_ddim(mix, np_ddim(mix, x, tt, np.full(6, t_mid)), np.full(6, t_mid), np.full(6, s))
        target = np.asarray(distillation_target(jnp.asarray(x, jnp.float32), jnp.full(6, t), jnp.asarray(z2, jnp.float32),
                                                jnp.full(6, s), SCHEDULE), np.float64)
        a_t, s_t = np_alpha_sigma(tt)
        a_s, s_s = np_alpha_sigma(np.full(6, s))
        one_step = a_s * target + s_s * (x - a_t * target) / s_t
        np.testing.assert_allclose(one_step, z2, atol=2e-5 * (1 + np.abs(z2).max()))
        if s == 0.0:  # the last student step: the target is the teacher's final x0
            np.testing.assert_allclose(target, z2, atol=1e-5)


def test_progressive_loss_equals_float64_reference():
    """The loss of a scaled student against the exact teacher, recomputed in float64
    from the same random draws (times, noise), with snr_trunc weighting."""
    mix = mixture()
    den = ScaledOracle(mix)
    method = progressive_distillation(den, start_steps=8, steps_per_round=10, rounds=3)
    extra = method.init_extra(1.0, 1.0)
    x0 = mix.sample_data(jax.random.PRNGKey(1), 16)
    rng = jax.random.PRNGKey(2)
    loss, aux = method.loss_fn(0.9, {"image": x0}, rng, state_with(extra))
    assert aux["student_steps"] == 4
    # the same draws, by hand
    k_t, k_eps, _ = jax.random.split(rng, 3)
    j = np.asarray(jax.random.randint(k_t, (16,), 0, 4))
    eps = np.asarray(jax.random.normal(k_eps, x0.shape), np.float64)
    t, t_mid, s = (np.asarray(trailing_time(2 * j + k, 8, 1000), np.float64) for k in range(3))
    x = np.asarray(x0, np.float64)
    a_t, s_t = np_alpha_sigma(t)
    z = a_t * x + s_t * eps
    z2 = np_ddim(mix, np_ddim(mix, z, t, t_mid), t_mid, s)
    a_s, s_s = np_alpha_sigma(s)
    target = (z2 - (s_s / s_t) * z) / (a_s - (s_s / s_t) * a_t)
    student_x0 = 0.9 * np_oracle_x0(mix, z, t)
    weight = np.maximum(a_t[:, 0] ** 2 / s_t[:, 0] ** 2, 1.0)
    expected = np.mean(weight * np.mean((student_x0 - target) ** 2, axis=1))
    np.testing.assert_allclose(float(loss), expected, rtol=2e-3)


def test_rounds_advance_and_copy_the_student_into_the_teacher():
    method = progressive_distillation(ScaledOracle(mixture()), start_steps=8, steps_per_round=10, rounds=3)
    extra = method.init_extra(jnp.asarray(1.0), jnp.asarray(1.0))
    for step, params, want_round, want_steps, want_teacher in [
            (9, 2.0, 0, 4, 1.0), (10, 3.0, 1, 2, 3.0), (20, 5.0, 2, 1, 5.0), (30, 7.0, 2, 1, 5.0)]:
        state = method.after_update(state_with(extra, params=jnp.asarray(params), step=step))
        extra = state.extra
        assert (int(extra.round), int(extra.student_steps), float(extra.teacher)) == (want_round, want_steps,
                                                                                       want_teacher), step


def test_consistency_boundary_condition():
    c_skip, c_out = boundary_coefficients(jnp.asarray([0.0, 0.001, 0.5]), 1000)
    np.testing.assert_allclose(np.asarray(c_skip), [1.0, 0.25 / 100.25, 0.25 / (5000.0**2 + 0.25)], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(c_out), [0.0, 10 / np.sqrt(100.25), 5000 / np.sqrt(5000.0**2 + 0.25)],
                               rtol=1e-6)
    f = ConsistencyFunction(ScaledOracle(mixture()))
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    np.testing.assert_array_equal(np.asarray(f(1.0, x, jnp.zeros(5))[0].x0), np.asarray(x))  # f(x, 0) = x
    far = f(1.0, x, jnp.ones(5))[0].x0  # away from 0 it is the network's x0
    np.testing.assert_allclose(np.asarray(far), np.asarray(mixture()(None, x, jnp.ones(5))[0].x0), atol=1e-6)


def test_consistency_loss_equals_float64_reference():
    mix = mixture()
    den = ScaledOracle(mix)
    method = consistency_distillation(den, ConsistencyFunction(den), num_skip=10, target_decay=0.9)
    extra = method.init_extra(1.0, 1.0)
    x0 = mix.sample_data(jax.random.PRNGKey(5), 16)
    rng = jax.random.PRNGKey(6)
    loss, _ = method.loss_fn(0.8, {"image": x0}, rng, state_with(extra))
    k_n, k_eps = jax.random.split(rng)
    n = np.asarray(jax.random.randint(k_n, (16,), 0, 10))
    t_hi = np.asarray(trailing_time(10 - n - 1, 10, 1000), np.float64)
    t_lo = np.asarray(trailing_time(10 - n, 10, 1000), np.float64)
    eps = np.asarray(jax.random.normal(k_eps, x0.shape), np.float64)
    a, s = np_alpha_sigma(t_hi)
    z = a * np.asarray(x0, np.float64) + s * eps
    z_lo = np_ddim(mix, z, t_hi, t_lo)

    def f(scale, x, t):
        c_skip, c_out = (np.asarray(c, np.float64)[:, None] for c in boundary_coefficients(jnp.asarray(t), 1000))
        return c_skip * x + c_out * scale * np_oracle_x0(mix, x, np.maximum(t, 0.0))

    expected = np.mean((f(0.8, z, t_hi) - f(1.0, z_lo, t_lo)) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-3)
    # the EMA target moves towards the params
    state = method.after_update(state_with(extra, params=jnp.asarray(0.0)))
    np.testing.assert_allclose(float(state.extra.target), 0.9)


# ------------------------------------------------------------------------------------------ issue 26

@struct.dataclass
class ConstX0(Stateless):
    """x0 = 3 everywhere, eps consistent with it."""

    @property
    def schedule(self):
        return SCHEDULE

    def __call__(self, params, x_t, t, cond=None, **_):
        t = jnp.broadcast_to(t, x_t.shape[:1])
        a, s = (v[:, None] for v in SCHEDULE.alpha_sigma(t))
        x0 = jnp.full_like(x_t, 3.0)
        return type(mixture()(None, x_t, t)[0])(x0=x0, eps=(x_t - a * x0) / s), {}


@pytest.mark.parametrize("clip,mid,final", [(0.0, 1.302669, 3.0), (1.0, 0.754197, 1.0)])
def test_ddim_clip_x0_is_the_references_evaluation_sampler(clip, mid, final):
    """Salimans & Ho's evaluation DDIM clips x0 to [-1, 1] and recomputes eps from it
    (dpm.py:159-164). A stub x0 = 3, 2 trailing steps from x_T = 0.5 on the linear schedule
    (alpha, sigma = 0.0063528, 0.9999798 at t = 1; 0.2803341, 0.9599025 at t = 0.5):
    unclipped x_0.5 = 1.302669, final 3; clip_x0 = 1: 0.754197, final 1. The knob reaches the
    solver from a sampler spec and is traced."""
    from sampling.loop import sample
    from sampling.registry import ModelCaps
    from sampling.spec import SamplerSpec

    spec = SamplerSpec.parse(f"solver=ddim;steps=2;grid=trailing;clip_x0={clip:g}")
    den, solver, grid = spec.build(ConstX0(), ModelCaps())
    assert float(solver.clip_x0) == clip
    x_T = jnp.full((1, 3), 0.5)
    st = solver.step(solver.init(x_T, jax.random.PRNGKey(0)), lambda x, t, c: (den(None, x, t)[0], c), grid[0], grid[1])
    np.testing.assert_allclose(np.asarray(st.x), mid, atol=2e-6)
    np.testing.assert_allclose(np.asarray(sample(den, None, solver, grid, x_T, None)), final, atol=1e-5)
    # float64 port of the reference's step: clip x, eps from the clipped x, z_s = alpha_s x + sigma_s eps
    a1, s1 = np_alpha_sigma(np.array([1.0]))
    a5, s5 = np_alpha_sigma(np.array([0.5]))
    x = min(3.0, clip) if clip else 3.0
    np.testing.assert_allclose(float(a5[0, 0] * x + s5[0, 0] * (0.5 - a1[0, 0] * x) / s1[0, 0]), mid, atol=1e-6)


def test_ddim_without_clipping_is_unchanged_bit_for_bit():
    from sampling.solvers.ddim import DDIM, ddim_update

    mix = mixture()
    x = jax.random.normal(jax.random.PRNGKey(3), (7, 3)) * 2
    t, s = jnp.asarray(0.6), jnp.asarray(0.3)
    solver = DDIM(SCHEDULE, 0.0)
    st = jax.jit(lambda x: solver.step(solver.init(x, jax.random.PRNGKey(0)), lambda x, t, c: (mix(None, x, t)[0], c),
                                        t, s).x)(x)
    pred = mix(None, x, t)[0]
    want = jax.jit(lambda x0, eps: ddim_update(x0, eps, *SCHEDULE.alpha_sigma(s), *SCHEDULE.alpha_sigma(t), 0.0,
                                               jnp.zeros_like(x)))(pred.x0, pred.eps)
    np.testing.assert_array_equal(np.asarray(st), np.asarray(want))


def test_pseudo_huber_is_lcms_elementwise_form():
    """One 2x2 image, d = (0.1, -0.2, 0, 0.3), c = 1e-3: LCM's mean(sqrt(d^2 + c^2) - c)
    (train_lcm_distill_sd_wds.py:1234-1236) = 0.14925229; Kairos' old per-image form
    sqrt(mean(d^2) + c^2) - c = 0.18608554; l2 = mean(d^2) = 0.035."""
    from distill.consistency import consistency_distance

    d = jnp.asarray([0.1, -0.2, 0.0, 0.3]).reshape(1, 2, 2, 1)
    z = jnp.zeros_like(d)
    np.testing.assert_allclose(float(consistency_distance(d, z, "huber")), 0.14925229, rtol=1e-6)
    np.testing.assert_allclose(float(consistency_distance(d, z, "huber", "elementwise")), 0.14925229, rtol=1e-6)
    np.testing.assert_allclose(float(consistency_distance(d, z, "huber", "per_image")), 0.18608554, rtol=1e-6)
    np.testing.assert_allclose(float(consistency_distance(d, z, "l2")), 0.035, rtol=1e-6)
    torch = pytest.importorskip("torch")
    dt = torch.tensor(np.asarray(d), dtype=torch.float64)
    ref = torch.mean(torch.sqrt(dt**2 + 1e-3**2) - 1e-3)  # LCM's line, on the reference library
    np.testing.assert_allclose(float(consistency_distance(d, z, "huber")), float(ref), rtol=1e-6)
    with pytest.raises(ValueError, match="huber form"):
        consistency_distance(d, z, "huber", "mean")
