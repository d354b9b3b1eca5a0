"""Each method through the shared jitted train step on a tiny UNet: the loss falls, and
guided distillation's p knob mixes targets exactly as documented."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion.nn.denoiser import Denoiser
from diffusion.nn.unet import UNet
from diffusion.param import ddim_renoise
from diffusion.schedules import make_schedule
from diffusion.train.state import create_train_state
from diffusion.train.step import make_train_step
from distill import ConsistencyFunction, consistency_distillation, guided_distillation, progressive_distillation
from distill.progressive import distillation_target
from sampling.grids import trailing_time
from sampling.transforms import Guided

SCHEDULE = make_schedule("linear", 1000)


def tiny(guidance_embed=False):
    unet = UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_heads=1,
                num_classes=3, guidance_embed=guidance_embed)
    return Denoiser(unet, SCHEDULE, "v")


def init(den, key=0):
    kwargs = {"guidance": jnp.ones((1,))} if den.module.guidance_embed else {}
    params = den.module.init(jax.random.PRNGKey(key), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)),
                             label=jnp.zeros((1,), jnp.int32), **kwargs)["params"]
    # a teacher whose label and output layers matter (fresh ones are zero / near-identical)
    return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(7), p.shape), params)


def batch():
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    return {"image": jax.random.normal(k1, (8, 8, 8, 1)) * 0.5, "label": jax.random.randint(k2, (8,), 0, 3)}


def method_for(name):
    if name == "progressive":
        den = tiny()
        return den, progressive_distillation(den, start_steps=8, steps_per_round=1000, rounds=2, num_classes=3)
    if name == "guided":
        den = tiny(True)
        return den, guided_distillation(den, start_steps=8, steps_per_round=1000, rounds=2, num_classes=3,
                                        w_range=(1.0, 3.0), p_guided=0.5)
    den = tiny()
    return den, consistency_distillation(den, ConsistencyFunction(den), num_skip=10, target_decay=0.9,
                                         teacher_guidance=2.0, num_classes=3)


@pytest.mark.parametrize("name", ["progressive", "guided", "consistency"])
def test_a_short_run_lowers_the_loss(name):
    """30 steps on one batch with the draws (times, noise, w) held fixed: loss falls >2x."""
    den, method = method_for(name)
    params = init(den)
    optimizer = optax.adam(3e-3)
    state = create_train_state(params, optimizer, jax.random.PRNGKey(0), method.init_extra(params, params))
    fixed = jax.random.PRNGKey(11)
    step = jax.jit(make_train_step(lambda p, b, r, s: method.loss_fn(p, b, fixed, s), optimizer, 0.0,
                                   after_update=method.after_update))
    b = batch()
    losses = []
    for _ in range(30):
        state, metrics = step(state, b)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses[::6]


@pytest.mark.parametrize("vanilla_w", ["drawn", "target"])
def test_guided_target_mixes_guided_and_unguided_teachers(vanilla_w):
    """Round 0: per sample, the target is two DDIM steps of the CFG teacher at the drawn
    w (probability p) or at w = 1 (the conditional teacher), recomputed here from
    separate conditional and unconditional calls. The student is told the target's w
    (``vanilla_w="target"``, Meng et al.) or the drawn w (``"drawn"``, Kairos before issue 26)."""
    den = tiny(True)
    params = init(den)
    method = guided_distillation(den, start_steps=8, steps_per_round=1000, rounds=2, num_classes=3,
                                 w_range=(1.5, 4.0), p_guided=0.5, vanilla_w=vanilla_w)
    extra = method.init_extra(params, params)
    state = create_train_state(params, optax.sgd(0.0), jax.random.PRNGKey(0), extra)
    b, rng = batch(), jax.random.PRNGKey(5)
    loss, _ = method.loss_fn(params, b, rng, state)
    # the same draws by hand
    k_t, k_eps, k_draw = jax.random.split(rng, 3)
    k_w, k_p = jax.random.split(k_draw)
    w = jax.random.uniform(k_w, (8,), minval=1.5, maxval=4.0)
    guided = jax.random.uniform(k_p, (8,)) < 0.5
    assert 0 < int(guided.sum()) < 8  # both kinds of target in this batch
    w_target = jnp.where(guided, w, 1.0)
    j = jax.random.randint(k_t, (8,), 0, 4)
    t, t_mid, s = (trailing_time(2 * j + k, 8, 1000) for k in range(3))
    x0 = b["image"]
    eps = jax.random.normal(k_eps, x0.shape)
    a, sg = SCHEDULE.alpha_sigma(t)
    z = a[:, None, None, None] * x0 + sg[:, None, None, None] * eps

    def cfg(x, tt):
        cond = den(params, x, tt, {"label": b["label"], "guidance": w_target})[0]
        uncond = den(params, x, tt, {"label": jnp.full((8,), 3), "guidance": w_target})[0]
        mix = lambda c, u: u + w_target[:, None, None, None] * (c - u)  # noqa: E731
        return type(cond)(x0=mix(cond.x0, uncond.x0), eps=mix(cond.eps, uncond.eps))

    z_s = ddim_renoise(cfg(ddim_renoise(cfg(z, t), *SCHEDULE.alpha_sigma(t_mid)), t_mid), *SCHEDULE.alpha_sigma(s))
    target = distillation_target(z, t, z_s, s, SCHEDULE)
    pred, _ = den(params, z, t, {"label": b["label"], "guidance": w if vanilla_w == "drawn" else w_target})
    weight = jnp.maximum(jnp.exp(SCHEDULE.logsnr(t)), 1.0)
    expected = jnp.mean(weight * jnp.mean((pred.x0 - target) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-4)
    # and the CFG teacher is the library's Guided transform
    g, _ = Guided(den, w_target, null_label=3)(params, z, t, {"label": b["label"], "guidance": w_target})
    np.testing.assert_allclose(np.asarray(g.x0), np.asarray(cfg(z, t).x0), atol=1e-5)


# ------------------------------------------------------------------------------------------ issue 26

@functools.lru_cache(maxsize=None)  # each run once for the module (the states are immutable)
def _round_run(reset: bool, steps: int):
    """``steps`` jitted train steps of a 4 -> 2 -> 1 progressive run with 2-step rounds,
    Kairos' optimizer (clip 1, AdamW lr 2e-4, round_linear), from the same start."""
    from diffusion.train.optim import make_optimizer

    den = tiny()
    params = init(den)
    method = progressive_distillation(den, start_steps=4, steps_per_round=2, rounds=2, num_classes=3,
                                      reset_optimizer=reset)
    opt = make_optimizer(2e-4, 0, 4, schedule="round_linear", round_steps=2)
    state = create_train_state(params, opt, jax.random.PRNGKey(0), method.init_extra(params, params))
    step = jax.jit(make_train_step(method.loss_fn, opt, 0.0, after_update=method.after_update))
    for _ in range(steps):
        state, _ = step(state, batch())
    return den, method, opt, state, step


def test_a_round_boundary_starts_a_fresh_adam():
    """The reference builds a new optimizer at every halving (diffusion_distillation.ipynb cell
    1Qnjl_r36jdo): after the step that ends round 0, Adam's count, mu and nu and the schedule's
    count are all 0 (optax's initial state), and the next update is a fresh Adam's first step,
    |delta theta| = lr g / (|g| + 1e-8) = lr = 2e-4 wherever |g| >> 1e-8 (round_linear restarts at
    full lr). Kept across rounds (reset_optimizer=False, before issue 26) the carried nu scales it."""
    den, method, opt, state, step = _round_run(True, 2)
    assert int(state.extra.round) == 1
    leaves = jax.tree.leaves(state.opt_state)
    assert leaves and all(not np.any(np.asarray(x)) for x in leaves)
    fresh = opt.init(state.params)
    assert jax.tree.structure(fresh) == jax.tree.structure(state.opt_state)
    for a, b in zip(jax.tree.leaves(fresh), leaves):
        assert a.dtype == b.dtype and a.shape == b.shape
    for reset, fresh_step in ((True, True), (False, False)):
        _, _, _, state, step = _round_run(reset, 2)
        # jitted: computed op by op, this gradient was half of the test's time
        grads = jax.jit(jax.grad(lambda p: method.loss_fn(p, batch(), jax.random.fold_in(state.rng, state.step),
                                                         state)[0]))(state.params)
        g = jnp.concatenate([x.ravel() for x in jax.tree.leaves(grads)])
        g = g * jnp.minimum(1.0, 1.0 / jnp.linalg.norm(g))  # the global-norm clip at 1
        new, _ = step(state, batch())
        delta = jnp.concatenate([(a - b).ravel() for a, b in zip(jax.tree.leaves(new.params),
                                                                   jax.tree.leaves(state.params))])
        big = np.asarray(jnp.abs(g) > 1e-4)
        assert big.sum() > 100
        ratio = np.abs(np.asarray(delta)[big]) / 2e-4
        if fresh_step:
            assert np.max(np.abs(ratio - 1.0)) < 1e-3, np.max(np.abs(ratio - 1.0))
        else:
            assert np.max(np.abs(ratio - 1.0)) > 0.05


def test_without_reset_the_optimizer_state_is_todays():
    """reset_optimizer=False: after the boundary step the optimizer state is the plain train
    step's (no after_update), bit for bit."""
    den, method, opt, state, _ = _round_run(False, 2)
    params = init(den)
    plain = create_train_state(params, opt, jax.random.PRNGKey(0), method.init_extra(params, params))
    step = jax.jit(make_train_step(method.loss_fn, opt, 0.0))
    for _ in range(2):
        plain, _ = step(plain, batch())
    for a, b in zip(jax.tree.leaves(plain.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(jax.tree.leaves(state.opt_state)[0]) == 2  # Adam's count carried


def test_guided_draws_vanilla_w():
    """p = 0.5 over 10 000 samples: half are vanilla (w_target = 1). With vanilla_w="target"
    (Meng et al.: the student's w and its target's agree) the student is told w_target; with
    "drawn" (Kairos before issue 26) the drawn w, whose mean target is CFG at 1 + p (w - 1)."""
    from distill.progressive import guided_draws

    b = {"image": jnp.zeros((10_000, 1, 1, 1)), "label": jnp.zeros((10_000,), jnp.int32)}
    key = jax.random.PRNGKey(4)
    d = guided_draws(key, b, w_range=(1.0, 5.0), p_guided=0.5, num_classes=3, vanilla_w="target")
    w_t = np.asarray(d["w_target"])
    np.testing.assert_array_equal(np.asarray(d["student"]["guidance"]), w_t)
    np.testing.assert_array_equal(np.asarray(d["teacher"]["guidance"]), w_t)
    assert 0.48 <= np.mean(w_t == 1.0) <= 0.52
    rest = w_t[w_t != 1.0]
    assert rest.min() >= 1.0 and rest.max() <= 5.0
    d_old = guided_draws(key, b, w_range=(1.0, 5.0), p_guided=0.5, num_classes=3, vanilla_w="drawn")
    np.testing.assert_array_equal(np.asarray(d_old["student"]["guidance"]), np.asarray(d_old["w"]))
    np.testing.assert_array_equal(np.asarray(d_old["w_target"]), w_t)
    free = guided_draws(key, b, w_range=(1.0, 5.0), p_guided=0.5, num_classes=3, embed=False)
    assert "guidance" not in free["student"] and "guidance" not in free["teacher"]


class _ConstX0:
    """A class-conditional stub: x0 = params["c"] for a label, params["u"] for the null label
    (3); eps consistent with it. Any batch size ([2B] under CFG)."""

    schedule = SCHEDULE

    def __call__(self, params, x_t, t, cond=None, **_):
        from diffusion.param import Prediction

        lab = cond["label"]
        x0 = jnp.where((lab == 3)[:, None, None, None], params["u"], params["c"]) * jnp.ones_like(x_t)
        a, s = (v[:, None, None, None] for v in SCHEDULE.alpha_sigma(jnp.broadcast_to(t, lab.shape)))
        return Prediction(x0=x0, eps=(x_t - a * x0) / s), {}


def test_snapfusion_cfg_mode_loss_by_hand():
    """guided_student=cfg (SnapFusion): a w-free student under CFG. Student x0_c = 0.3,
    x0_u = 0.1, w = 3: its CFG x0 is 0.1 + 3 * 0.2 = 0.7. The teacher (x0_c = 0.4, x0_u =
    0.35) under CFG at w = 3 predicts 0.5 everywhere, so two DDIM steps and the target are
    exactly 0.5; at a 2-step student's times (t = 1, 0.5) SNR < 1, weight 1: loss (0.7 -
    0.5)^2 = 0.04 when every sample is guided (p = 1). Vanilla samples (p = 0): the plain
    conditional student 0.3 against the conditional teacher 0.4: 0.01. gamma = 0.2 adds
    0.2 (1 + SNR) (0.3 - x0)^2 = 0.2 * 0.09 / sigma_t^2 on zero data."""
    from distill.progressive import cfg_and_conditional

    stub, b = _ConstX0(), {"image": jnp.zeros((64, 2, 2, 1)), "label": jnp.arange(64) % 3}
    student, teacher = {"c": 0.3, "u": 0.1}, {"c": 0.4, "u": 0.35}
    rng = jax.random.PRNGKey(9)

    def loss(p, ori=0.0):
        m = guided_distillation(stub, start_steps=4, steps_per_round=10, rounds=1, num_classes=3, w_range=(3.0, 3.0),
                                p_guided=p, mode="cfg", ori_weight=ori)
        from distill.progressive import RoundState
        extra = RoundState(teacher=teacher, round=jnp.zeros((), jnp.int32), student_steps=jnp.asarray(2, jnp.int32))
        state = create_train_state(student, optax.sgd(0.0), jax.random.PRNGKey(0), extra)
        return m.loss_fn(student, b, rng, state)

    np.testing.assert_allclose(float(loss(1.0)[0]), 0.04, rtol=1e-5)
    np.testing.assert_allclose(float(loss(0.0)[0]), 0.01, rtol=1e-5)
    k_t = jax.random.split(rng, 3)[0]
    t = trailing_time(2 * jax.random.randint(k_t, (64,), 0, 2), 4, 1000)
    sigma = np.asarray(SCHEDULE.alpha_sigma(t)[1], np.float64)
    total, aux = loss(1.0, ori=0.2)
    np.testing.assert_allclose(float(aux["loss_ori"]), np.mean(0.09 / sigma**2), rtol=1e-5)
    np.testing.assert_allclose(float(total), 0.04 + 0.2 * np.mean(0.09 / sigma**2), rtol=1e-5)
    # the student's CFG is Guided's combination
    z, tt = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 2, 1)), jnp.full((4,), 0.5)
    w = jnp.asarray([1.0, 2.0, 3.0, 7.0])
    cfg, plain = cfg_and_conditional(stub, student, z, tt, {"label": jnp.arange(4) % 3}, w, 3)
    np.testing.assert_allclose(np.asarray(cfg.x0[:, 0, 0, 0]), 0.1 + np.asarray(w) * 0.2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(plain.x0), 0.3, rtol=1e-6)


def test_lcd_teacher_step_is_cfg_at_one_plus_w():
    """w_min = w_max = 5 (LCM's convention): the teacher's DDIM step is Guided(teacher, 6), and
    the student and its EMA target are told the standard scale 6 (loss recomputed by hand)."""
    from diffusion.param import forward_noise

    den, wden = tiny(), tiny(True)
    teacher_params, params = init(den), init(wden, key=1)
    method = consistency_distillation(den, ConsistencyFunction(wden), num_skip=10, w_range=(5.0, 5.0), num_classes=3)
    state = create_train_state(params, optax.sgd(0.0), jax.random.PRNGKey(0), method.init_extra(params, teacher_params))
    b, rng = batch(), jax.random.PRNGKey(5)
    loss, _ = method.loss_fn(params, b, rng, state)
    k_n, k_eps = jax.random.split(rng)
    n = jax.random.randint(k_n, (8,), 0, 10)
    t_hi, t_lo = trailing_time(9 - n, 10, 1000), trailing_time(10 - n, 10, 1000)
    z = forward_noise(SCHEDULE, b["image"], jax.random.normal(k_eps, b["image"].shape), t_hi)
    g, _ = Guided(den, 6.0, null_label=3)(teacher_params, z, t_hi, {"label": b["label"]})
    z_lo = ddim_renoise(g, *SCHEDULE.alpha_sigma(t_lo))
    f = ConsistencyFunction(wden)
    cond = {"label": b["label"], "guidance": jnp.full((8,), 6.0)}
    expected = jnp.mean((f(params, z, t_hi, cond)[0].x0 - f(params, z_lo, t_lo, cond)[0].x0) ** 2)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


def test_consistency_without_lcd_is_todays_loss_bit_for_bit():
    """w_max = 0 (the default) and l2: the loss of the code before issue 26, recomputed here."""
    from diffusion.param import forward_noise

    den = tiny()
    params = init(den)
    method = consistency_distillation(den, ConsistencyFunction(den), num_skip=10, teacher_guidance=2.0, num_classes=3)
    state = create_train_state(params, optax.sgd(0.0), jax.random.PRNGKey(0), method.init_extra(params, params))
    b, rng = batch(), jax.random.PRNGKey(5)

    def old_loss(params, rng, state):  # distill/consistency.py at 410f82e
        x0 = b["image"]
        k_n, k_eps = jax.random.split(rng)
        n = jax.random.randint(k_n, (8,), 0, 10)
        t_hi, t_lo = trailing_time(10 - n - 1, 10, 1000), trailing_time(10 - n, 10, 1000)
        z = forward_noise(SCHEDULE, x0, jax.random.normal(k_eps, x0.shape, x0.dtype), t_hi)
        cond = {"label": b["label"]}
        z_lo = ddim_renoise(Guided(den, 2.0, null_label=3)(state.extra.teacher, z, t_hi, cond)[0],
                            *SCHEDULE.alpha_sigma(t_lo))
        f = ConsistencyFunction(den)
        target = jax.lax.stop_gradient(f(state.extra.target, z_lo, t_lo, cond)[0].x0)
        return jnp.mean(jnp.mean(jnp.square(f(params, z, t_hi, cond)[0].x0 - target), axis=(1, 2, 3)))

    new = jax.jit(lambda p, r, s: method.loss_fn(p, b, r, s)[0])(params, rng, state)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(jax.jit(old_loss)(params, rng, state)))
