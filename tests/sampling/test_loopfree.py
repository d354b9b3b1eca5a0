"""TiUE's encode/decode split of both UNets and loop-free sampling (docs/design/tiue.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.nn.denoiser import Denoiser
from diffusion.nn.sd_unet import SDUNet, SDUNetConfig
from diffusion.nn.unet import UNet
from diffusion.schedules import make_schedule
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.loopfree import loopfree_chain, loopfree_predictions
from sampling.registry import ModelCaps
from sampling.solvers.ddim import ddim_update
from sampling.spec import make_spec

SCHED = make_schedule("linear")
NET = UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=2, num_classes=3,
           out_channels=1)
SD = SDUNet(SDUNetConfig(in_channels=2, out_channels=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=6, num_heads=(2, 2),
                         norm_num_groups=4, sample_size=8))
CAPS = ModelCaps(null_label=3, self_attention=True, feature_branches=NET.num_branches)


def noisy(params, key=1, scale=0.05):
    """Init params plus noise: the zero-initialised output conv would make every split equal."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(key), len(leaves))
    return jax.tree.unflatten(tree, [w + scale * jax.random.normal(k, w.shape) for w, k in zip(leaves, keys)])


X = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 1))
LABEL = jnp.array([0, 2, 3], jnp.int32)
PARAMS = noisy(NET.init(jax.random.PRNGKey(0), X, jnp.zeros((3,)), LABEL)["params"])


def test_decode_of_encode_is_the_full_call_for_both_unets():
    t = jnp.array([0.1, 0.5, 0.9])
    full = NET.apply({"params": PARAMS}, X, t, LABEL)
    feats = NET.apply({"params": PARAMS}, X, t, LABEL, method="encode")
    np.testing.assert_array_equal(NET.apply({"params": PARAMS}, feats, t, LABEL, method="decode"), full)
    assert len(feats.skips) == NET.num_branches
    # the decoder's own time embedding matters: decoding at other times changes the output
    assert np.abs(NET.apply({"params": PARAMS}, feats, 1 - t, LABEL, method="decode") - full).max() > 1e-3

    x, ctx = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 2)), jax.random.normal(jax.random.PRNGKey(4), (2, 5, 6))
    p = noisy(SD.init(jax.random.PRNGKey(0), x, jnp.zeros((2,)), ctx)["params"])
    t = jnp.array([0.2, 0.7])
    feats = SD.apply({"params": p}, x, t, ctx, method="encode")
    np.testing.assert_array_equal(SD.apply({"params": p}, feats, t, ctx, method="decode"),
                                  SD.apply({"params": p}, x, t, ctx))


def test_split_calls_are_refused_where_they_cannot_hold():
    from diffusion.contract import Modes

    with pytest.raises(ValueError, match="COMPUTE mode only"):
        NET.apply({"params": PARAMS}, X, jnp.zeros((3,)), LABEL, modes=Modes(attention="store"), method="encode")
    with pytest.raises(ValueError, match="decode needs the EncoderFeatures"):
        NET.apply({"params": PARAMS}, X, jnp.zeros((3,)), LABEL, method="decode")
    video = UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), temporal=True, out_channels=1)
    with pytest.raises(ValueError, match="for image UNets"):
        video.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 8, 8, 1)), jnp.zeros((1, 2)), method="encode")


def hand_rolled(den, grid, x_T, cond):
    """The chain written out: encode once at grid[0], decode each step separately, DDIM."""
    feats = den.encode(PARAMS, x_T, grid[0], cond)
    x = x_T
    for k in range(grid.shape[0] - 1):
        pred = den.prediction(den.decode_raw(PARAMS, feats, grid[k], cond), x, grid[k])
        a_t, s_t = SCHED.alpha_sigma(grid[k])
        a_s, s_s = SCHED.alpha_sigma(grid[k + 1])
        x = ddim_update(pred.x0, pred.eps, a_s, s_s, a_t, s_t, 0.0, jnp.zeros_like(x))
    return np.asarray(x)


def _close(a, b):  # float32 rounding of differently fused programs, relative to the sample's scale
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("pred_type", ["x0", "v"])
def test_the_loopfree_sampler_is_the_hand_rolled_chain_of_the_same_decoder_outputs(pred_type):
    den = Denoiser(NET, SCHED, pred_type)
    grid = make_grid("trailing", 4, SCHED)
    cond = {"label": LABEL}
    want = hand_rolled(den, grid, X, cond)
    x0, eps = jax.jit(lambda p, x: loopfree_chain(den, p, grid, x, cond))(PARAMS, X)
    _close(x0, want)
    assert eps.shape == (4, *X.shape)
    # the registered part, under the ordinary sampling loop, gives the same sample
    d, solver, g = make_spec("ddim", 4, loopfree="on").build(den, CAPS)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(grid))
    _close(sample(d, PARAMS, solver, g, X, cond), want)
    # and it is not the ordinary 4-step sampler
    d, solver, g = make_spec("ddim", 4).build(den, CAPS)
    assert np.abs(np.asarray(sample(d, PARAMS, solver, g, X, cond)) - want).max() > 1e-3


def test_the_batched_decoder_equals_one_call_per_time():
    den = Denoiser(NET, SCHED, "eps")
    times = jnp.array([0.9, 0.6, 0.3])
    raw = loopfree_predictions(den, PARAMS, times, X, {"label": LABEL})
    feats = den.encode(PARAMS, X, times[0], {"label": LABEL})
    for k in range(3):
        np.testing.assert_allclose(raw[k], den.decode_raw(PARAMS, feats, times[k], {"label": LABEL}),
                                   rtol=1e-5, atol=1e-6)


def test_loopfree_refuses_what_cannot_hold_and_counts_one_call():
    den = Denoiser(NET, SCHED, "eps")
    for other in ({"time_shift": "20:300"}, {"attention_reuse": "hurry:2"}, {"feature_cache": "uniform:2"}):
        with pytest.raises(ValueError, match="loopfree cannot be combined with"):
            make_spec("ddim", 4, loopfree="on", **other).build(den, CAPS)
    with pytest.raises(ValueError, match="encode/decode split"):
        make_spec("ddim", 4, loopfree="on").build(Denoiser(lambda *a: None, SCHED), CAPS)
    for bad in ("0", "-1", "nan", "yes"):
        with pytest.raises(ValueError, match="bad loopfree"):
            make_spec("ddim", 4, loopfree=bad)
    assert make_spec("ddim", 4, loopfree="on").network_calls(SCHED) == 1
    assert make_spec("ddim", 4).network_calls(SCHED) == 4


def test_loopfree_under_guidance_is_the_guided_chain_of_both_branches():
    """Guidance wraps the loop-free part: one encoder and one decoder call on the doubled
    batch; step k mixes the conditional and unconditional predictions of row k at x_k."""
    den = Denoiser(NET, SCHED, "v")
    grid = make_grid("trailing", 4, SCHED)
    cond, null, w = {"label": LABEL}, {"label": jnp.full_like(LABEL, 3)}, 2.5
    raw_c = loopfree_predictions(den, PARAMS, grid[:-1], X, cond)
    raw_u = loopfree_predictions(den, PARAMS, grid[:-1], X, null)
    x = X
    for k in range(4):
        c, u = den.prediction(raw_c[k], x, grid[k]), den.prediction(raw_u[k], x, grid[k])
        (a_t, s_t), (a_s, s_s) = SCHED.alpha_sigma(grid[k]), SCHED.alpha_sigma(grid[k + 1])
        x = ddim_update(u.x0 + w * (c.x0 - u.x0), u.eps + w * (c.eps - u.eps), a_s, s_s, a_t, s_t, 0.0,
                        jnp.zeros_like(x))
    d, solver, g = make_spec("ddim", 4, loopfree="on", guidance=w).build(den, CAPS)
    _close(sample(d, PARAMS, solver, g, X, cond), x)
