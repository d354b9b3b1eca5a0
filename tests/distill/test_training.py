"""Each method through the shared jitted train step on a tiny UNet: the loss falls, and
guided distillation's p knob mixes targets exactly as documented."""

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


def test_guided_target_mixes_guided_and_unguided_teachers():
    """Round 0: per sample, the target is two DDIM steps of the CFG teacher at the drawn
    w (probability p) or at w = 1 (the conditional teacher), recomputed here from
    separate conditional and unconditional calls."""
    den = tiny(True)
    params = init(den)
    method = guided_distillation(den, start_steps=8, steps_per_round=1000, rounds=2, num_classes=3,
                                 w_range=(1.5, 4.0), p_guided=0.5)
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
    pred, _ = den(params, z, t, {"label": b["label"], "guidance": w})
    weight = jnp.maximum(jnp.exp(SCHEDULE.logsnr(t)), 1.0)
    expected = jnp.mean(weight * jnp.mean((pred.x0 - target) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-4)
    # and the CFG teacher is the library's Guided transform
    g, _ = Guided(den, w_target, null_label=3)(params, z, t, {"label": b["label"], "guidance": w_target})
    np.testing.assert_allclose(np.asarray(g.x0), np.asarray(cfg(z, t).x0), atol=1e-5)
