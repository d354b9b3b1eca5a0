"""PSO as its authors' code runs it (issue 26; docs/design/fidelity.md): the training times
against diffusers' indexing, the eps-weighted pair loss at those times on a float64
Gaussian-mixture oracle, DMD2's re-noising kernel against the consistency sampler, and the
online loss over every transition of the kernel's trajectories, with ties weighing zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import pso, pso_online
from sampling.grids import make_grid
from tests.distill.test_pso import DEN, PARAMS, SCHED, _batch, log_sigmoid

MEANS, T_LIN = np.array([[1.0, 1.0], [-1.0, -0.5]]), 1000
LOG_AB = np.concatenate([[0.0], np.cumsum(np.log1p(-np.linspace(1e-4, 0.02, T_LIN)))])  # DDPM's linear betas


def alpha_sigma64(t):
    """float64 ``(alpha, sigma)`` of the linear schedule at lattice times ``t = n / T``."""
    ab = np.exp(LOG_AB[np.round(np.asarray(t) * T_LIN).astype(int)])
    return np.sqrt(ab), np.sqrt(1 - ab)


def x0_hat64(x, t, std):
    """float64 E[x0 | x_t] of the two-component mixture (means ``MEANS``, isotropic ``std``)."""
    a, s = (v[:, None] for v in alpha_sigma64(t))
    var = a**2 * std**2 + s**2  # [B, 1]
    diff = x[:, None, :] - a[:, :, None] * MEANS[None]  # [B, 2, D]
    logits = -np.log(var) - 0.5 * (diff**2).sum(-1) / var  # D = 2: -0.5 D log var
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return np.einsum("bk,bkd->bd", r, MEANS[None] + (a * std**2 / var)[:, :, None] * diff)


def pair_errors64(x_w, x_l, eps, t, std):
    """float64 ``(x0-MSE w, x0-MSE l, eps-MSE w, eps-MSE l)``: the reference's
    ``mean(sigma_EDM^-2 (x0_hat - x0)^2)`` (DB:1812-1848) with ``sigma_EDM^-2 = alpha^2 / sigma^2``."""
    a, s = alpha_sigma64(t)
    err = lambda x: ((x0_hat64(a[:, None] * x + s[:, None] * eps, t, std) - x) ** 2).mean(1)  # noqa: E731
    e_w, e_l = err(x_w), err(x_l)
    return e_w, e_l, a**2 / s**2 * e_w, a**2 / s**2 * e_l


def test_pair_times_follow_the_references_indexing():
    from diffusers import EulerDiscreteScheduler

    sch = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    ts = sch.timesteps.numpy()  # descending 999 .. 0 (never set_timesteps-ed in the reference)
    assert ts[0] == 999 and ts[-1] == 0
    for k, want in ((4, [.751, .501, .251, .001]), (3, [.668, .335, .002]), (2, [.501, .001]), (1, [.001])):
        stride = 1000 // k
        n = ts[stride * np.arange(k) + stride - 1]  # train_pso_sdxl_turbo_dreambooth.py:1727-1739
        np.testing.assert_allclose((n + 1) / 1000, want)
        np.testing.assert_allclose(pso.reference_times(k, SCHED), want, rtol=1e-6)
        # diffusers timestep n is our t = (n + 1) / T: the same alpha_bar
        np.testing.assert_allclose(SCHED.alpha_bar(jnp.asarray((n + 1) / 1000, jnp.float32)),
                                   sch.alphas_cumprod.numpy()[n.astype(int)], rtol=1e-5)
    assert 1.0 not in pso.reference_times(4, SCHED).tolist()
    np.testing.assert_allclose(pso.pair_times_of("grid", 4, SCHED), [1, .75, .5, .25], rtol=1e-6)


class Recording:
    """The mixture oracle, recording the times it is called at (eagerly)."""

    def __init__(self, mixture):
        self.mixture, self.schedule, self.times = mixture, mixture.schedule, []

    def __call__(self, params, x, t, cond=None):
        self.times.append(np.asarray(t))
        return self.mixture(params, x, t, cond)


@pytest.mark.parametrize("pair_times, want", [("reference", [.001, .251, .501, .751]), ("grid", [.25, .5, .75, 1.0])])
def test_the_offline_loss_draws_its_times_uniformly_from_the_pair_times(pair_times, want):
    from diffusion.analytic import make_mixture

    den = Recording(make_mixture(SCHED, MEANS, 0.3))
    refs_ = (np.zeros((8, 2), np.float32), np.zeros((8,), np.int32))
    method = pso.pso_tuning(den, steps=4, references=refs_, pair_times=pair_times)
    state = type("S", (), {"extra": method.init_extra(None, None)})()
    method.loss_fn(None, {"image": jnp.ones((256, 2))}, jax.random.PRNGKey(0), state)
    np.testing.assert_allclose(np.unique(np.round(np.concatenate(den.times), 6)), want, rtol=1e-6)


def test_the_pair_loss_is_eps_weighted_at_the_reference_times_on_the_mixture_oracle():
    """The hand numbers of docs/design/fidelity.md (PSO): a float64 port of the reference's
    loss on a Gaussian mixture against Kairos' float32 pair errors and losses."""
    from diffusion.analytic import make_mixture

    t = np.array([.751, .501, .251, .001])
    x_w, x_l, eps = (np.tile(v, (4, 1)) for v in ([0.8, 1.1], [0.6, 0.7], [0.3, -0.5]))
    e_w, e_l, l_w, l_l = pair_errors64(x_w, x_l, eps, t, 0.3)
    _, _, r_w, r_l = pair_errors64(x_w, x_l, eps, t, 0.5)  # the frozen reference: another mixture
    np.testing.assert_allclose(alpha_sigma64(t)[0] ** 2 / alpha_sigma64(t)[1] ** 2,
                               [3.31109e-3, 8.43595e-2, 1.089528, 9999.0], rtol=1e-5)
    np.testing.assert_allclose(l_w, [0.00225541, 0.0458761, 0.0309748, 0.182127], rtol=1e-5)
    np.testing.assert_allclose(l_l, [0.00093524, 0.0192520, 0.00721223, 0.167837], rtol=1e-5)
    np.testing.assert_allclose(e_w, [0.681168, 0.543817, 0.0284295, 1.82145e-5], rtol=1e-5)

    tuned, ref = make_mixture(SCHED, MEANS, 0.3), make_mixture(SCHED, MEANS, 0.5)
    args = [jnp.asarray(a, jnp.float32) for a in (x_w, x_l, eps)] + [pso.reference_times(4, SCHED), None]
    got = {w: pso.pair_errors(tuned, None, *args, w) for w in ("eps", "x0")}
    got_ref = pso.pair_errors(ref, None, *args, "eps")
    for g, w in zip((*got["eps"], *got["x0"], *got_ref), (l_w, l_l, e_w, e_l, r_w, r_l)):
        np.testing.assert_allclose(g, w, rtol=1e-4)
    snr = jnp.exp(SCHED.logsnr(pso.reference_times(4, SCHED)))
    np.testing.assert_allclose(got["eps"][0], snr * got["x0"][0], rtol=1e-4)  # eps-MSE = SNR x0-MSE

    hinge64 = np.maximum(0, 1 + 5 * (l_w - 0.1 * l_l)) + 0.5 * l_l
    np.testing.assert_allclose(hinge64, [1.011277, 1.229381, 1.154874, 1.910633], rtol=1e-6)
    assert hinge64.mean() == pytest.approx(1.326541, rel=1e-6)
    assert float(pso.hinge_loss(*got["eps"], 5.0, 0.1, 0.5)) == pytest.approx(1.326541, rel=1e-4)

    margin = (r_w - 0.1 * r_l) - (l_w - 0.1 * l_l)
    np.testing.assert_allclose(margin, [3.2963e-6, -3.15166e-4, 1.668255e-2, -7.92876e-3], rtol=1e-4)
    for beta, prior, want in ((200.0, 0.0, 0.806245), (200.0, 1.0, 0.855054), (5.0, 0.0, 0.688138)):
        dpo64 = np.mean(-log_sigmoid(beta * margin) + prior * l_l)
        assert dpo64 == pytest.approx(want, rel=1e-6)
        assert float(pso.dpo_loss(*got["eps"], *got_ref, beta, 0.1, prior)) == pytest.approx(want, rel=1e-4)
    per = -log_sigmoid(200.0 * margin)
    np.testing.assert_allclose(per, [0.692818, 0.725160, 0.034943, 1.772060], rtol=1e-5)

    # the contrast (what changed): our earlier x0-MSE at the trailing grid puts 35% on t = 1; the
    # reference's eps-MSE at its times puts 70% on t = 0.001
    e_grid = pair_errors64(x_w, x_l, eps, np.array([1.0, .75, .5, .25]), 0.3)[0]
    np.testing.assert_allclose(e_grid, [0.681953, 0.681112, 0.542249, 0.028244], rtol=1e-5)
    assert e_grid[0] / e_grid.sum() == pytest.approx(0.352693, rel=1e-5)
    assert l_w[3] / l_w.sum() == pytest.approx(0.697181, rel=1e-5)


def test_renoise_kernel_is_the_dmd2_step_and_the_consistency_sampler():
    from diffusion.analytic import make_mixture
    from sampling.solvers.consistency import Consistency

    tuned, ref = make_mixture(SCHED, MEANS, 0.3), make_mixture(SCHED, MEANS, 0.5)
    x, x_next = jnp.array([[0.5, -0.2]]), jnp.array([[0.1, 0.3]])
    t, s = jnp.array([0.75]), jnp.array([0.5])
    for kernel, std_want, logp_want in (("renoise", 0.959902, (-0.894269, -0.894273)),
                                        ("ddim", 0.940794, (-0.878072, -0.878155))):
        mean, std = pso_online.transition(tuned, None, x, t, s, None, kernel, 1.0)
        ref_mean, _ = pso_online.transition(ref, None, x, t, s, None, kernel, 1.0)
        assert float(std[0]) == pytest.approx(std_want, rel=1e-5)
        np.testing.assert_allclose([float(pso_online.gaussian_logprob(x_next, m, std)[0]) for m in (mean, ref_mean)],
                                   logp_want, rtol=1e-5)
    # DMD2's re-noising is DDIM at eta = sigma_s / ddim_std(eta 1): 1.0061, 1.0203, 1.0411 on the trailing 4-grid
    grid = make_grid("trailing", 4, SCHED)
    etas = []
    for k in range(3):
        tk, sk = jnp.full((1,), grid[k]), jnp.full((1,), grid[k + 1])
        eta = float(SCHED.alpha_sigma(sk)[1][0] / pso_online.ddim_transition(tuned, None, x, tk, sk, None, 1.0)[1][0])
        etas.append(eta)
        for a, b in zip(pso_online.transition(tuned, None, x, tk, sk, None, "renoise", 1.0),
                        pso_online.ddim_transition(tuned, None, x, tk, sk, None, eta)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(etas, [1.0061, 1.0203, 1.0411], atol=1e-4)
    # one step of a re-noising trajectory is the consistency sampler's step with the same noise
    xs, cond = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1)), {"label": jnp.array([0, 1, 2])}
    tk, sk, key = jnp.full((3,), grid[1]), jnp.full((3,), grid[2]), jax.random.PRNGKey(4)
    solver = Consistency(SCHED)
    step = solver.step(solver.init(xs, key), lambda x_, t_, c: (DEN(PARAMS, x_, t_, cond)[0], c), tk, sk).x
    mean, std = pso_online.transition(DEN, PARAMS, xs, tk, sk, cond, "renoise", 1.0)
    z = jax.random.normal(jax.random.split(key)[1], xs.shape)
    np.testing.assert_allclose(mean + std[:, None, None, None] * z, step, atol=1e-5)
    # and its last step (s = 0) is deterministic: the model's x0
    last = pso_online.transition(DEN, PARAMS, xs, jnp.full((3,), grid[3]), jnp.zeros((3,)), cond, "renoise", 1.0)
    assert float(last[1].max()) == 0.0


def test_online_loss_averages_all_transitions_and_ties_weigh_zero():
    d_a, d_b = jnp.array([0.004, -0.003, 0.2]), jnp.array([-0.002, 0.001, -0.5])
    r = jnp.array([1.0, 2.0, 3.0, 0.5, 2.0, 3.5])
    h = pso_online.preference(r)
    np.testing.assert_array_equal(h, [1, 0, -1])  # DMD2's compare: a tie is 0 (not a win for either)
    d = pso_online.clipped_log_ratio(jnp.concatenate([d_a, d_b])[None], jnp.zeros((1, 6)), 0.1)
    per = [float(pso_online.online_loss(d[:, [i, i + 3]], h[i:i + 1], 50.0)) for i in range(3)]
    np.testing.assert_allclose(per, [0.554355, np.log(2.0), 10.033579], rtol=1e-5)
    assert float(pso_online.online_loss(d, h, 50.0)) == pytest.approx(3.760360, rel=1e-5)
    grad = jax.grad(lambda d_: pso_online.online_loss(d_, h, 50.0))(jnp.concatenate([d_a, d_b])[None] * 0.1)
    assert float(grad[0, 1]) == 0.0 and float(grad[0, 4]) == 0.0 and float(jnp.abs(grad).max()) > 0
    # J transitions: the mean of the per-transition losses
    dj = jax.random.uniform(jax.random.PRNGKey(0), (3, 6), minval=-0.1, maxval=0.1)
    assert float(pso_online.online_loss(dj, h, 50.0)) == pytest.approx(
        np.mean([float(pso_online.online_loss(dj[j:j + 1], h, 50.0)) for j in range(3)]), rel=1e-6)
    # which transitions: all K - 1 (never the deterministic last), or one per pair shared by its members
    np.testing.assert_array_equal(pso_online.transition_indices(None, "all", 4, 2), [[0] * 4, [1] * 4, [2] * 4])
    one = np.asarray(pso_online.transition_indices(jax.random.PRNGKey(1), "one", 4, 500))
    assert one.shape == (1, 1000) and set(one.ravel().tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(one[0, :500], one[0, 500:])


def test_the_online_loss_scores_every_transition_of_the_kernels_trajectories(monkeypatch):
    """The online loss by hand: the same draws, re-noising trajectories, every Gaussian
    transition scored under the tuned and the frozen params, ranked by a reward."""
    from diffusion.metrics import rewards

    reward = lambda images, labels: jnp.mean(images.reshape(images.shape[0], -1), axis=-1)  # noqa: E731
    # registered for this test only: other tests list the registry
    monkeypatch.setitem(rewards._REWARDS, "pso_test_brightness", lambda: reward)
    steps, b = 3, 4
    method = pso.pso_tuning(DEN, steps=steps, mode="online", reward="pso_test_brightness", num_classes=3)
    tuned = jax.tree.map(lambda a: a * 1.05, PARAMS)
    state = type("S", (), {"extra": method.init_extra(PARAMS, PARAMS)})()
    batch, key = _batch(), jax.random.PRNGKey(9)
    value, aux = jax.jit(lambda p: method.loss_fn(p, batch, key, state))(tuned)
    k_T, k_traj, _ = jax.random.split(key, 3)
    grid = make_grid("trailing", steps, SCHED)
    cond = {"label": jnp.concatenate([batch["label"]] * 2)}

    @jax.jit
    def by_hand():
        states = pso_online.trajectories(DEN, tuned, grid, jax.random.normal(k_T, (2 * b, 8, 8, 1)), cond, 1.0, k_traj,
                                  "renoise")
        d = []
        for k in range(steps - 1):
            t, s = jnp.full((2 * b,), grid[k]), jnp.full((2 * b,), grid[k + 1])
            mean, std = pso_online.transition(DEN, tuned, states[k], t, s, cond, "renoise", 1.0)
            ref_mean, _ = pso_online.transition(DEN, PARAMS, states[k], t, s, cond, "renoise", 1.0)
            logp = lambda m: pso_online.gaussian_logprob(states[k + 1], m, std)  # noqa: E731, B023
            d.append(logp(mean) - logp(ref_mean))
        return reward(states[-1], None), jnp.stack(d)

    r, d = (np.asarray(a, np.float64) for a in by_hand())
    h = np.sign(r[:b] - r[b:])
    d = np.clip(d, np.log(0.9), np.log(1.1))
    losses = -log_sigmoid(50.0 * h * (d[:, :b] - d[:, b:]))
    assert float(value) == pytest.approx(np.mean(losses), rel=1e-4)
    assert float(aux["ties"]) == np.mean(h == 0)
