"""The UNet and its time embedding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.nn.embeddings import TimeEmbedding, sinusoidal_embedding
from diffusion.nn.unet import UNet

TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=2)


def _init(model, x, t, **cond):
    return model.init(jax.random.PRNGKey(0), x, t, **cond)["params"]


def _randomize_zero_layers(params, key):
    """Replaces every all-zero leaf (zero-initialised outputs) by noise, so the net is non-trivial."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten([0.1 * jax.random.normal(k, l.shape) if not np.any(np.asarray(l)) else l
                           for k, l in zip(keys, leaves)])


def test_sinusoidal_embedding_closed_form_any_shape():
    t = jnp.array([[0.0, 0.25], [0.5, 1.0]])  # [B, F]
    e = sinusoidal_embedding(t, 6)
    assert e.shape == (2, 2, 6)
    freqs = np.exp(-math.log(10000.0) * np.arange(3) / 3)
    args = 1000.0 * 0.25 * freqs
    np.testing.assert_allclose(np.asarray(e[0, 1]), np.concatenate([np.cos(args), np.sin(args)]), rtol=1e-5, atol=1e-5)
    assert sinusoidal_embedding(jnp.asarray(0.3), 6).shape == (6,)


def test_time_embedding_of_b_f_matches_flattened_b():
    mod = TimeEmbedding(16, 32)
    t_bf = jax.random.uniform(jax.random.PRNGKey(1), (3, 4))
    p = mod.init(jax.random.PRNGKey(0), t_bf[:, 0])
    out_bf = mod.apply(p, t_bf)
    assert out_bf.shape == (3, 4, 32)
    np.testing.assert_allclose(np.asarray(out_bf).reshape(12, 32), np.asarray(mod.apply(p, t_bf.reshape(12))),
                               rtol=1e-5, atol=1e-6)


def test_output_shape_and_zero_output_at_init():
    model = UNet(**TINY, num_classes=10, out_channels=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    p = _init(model, x, jnp.ones(2), label=jnp.zeros(2, jnp.int32))
    out = model.apply({"params": p}, x, jnp.array([0.1, 0.9]), label=jnp.array([1, 2]))
    assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero-initialised output conv


def test_conditioning_and_time_change_the_output():
    model = UNet(**TINY, num_classes=10)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    p = _randomize_zero_layers(_init(model, x, jnp.ones(2), label=jnp.zeros(2, jnp.int32)), jax.random.PRNGKey(2))
    f = lambda t, y: np.asarray(model.apply({"params": p}, x, t, label=y))  # noqa: E731
    base = f(jnp.array([0.5, 0.5]), jnp.array([3, 3]))
    other_label = f(jnp.array([0.5, 0.5]), jnp.array([4, 10]))  # 10 = the null label
    other_time = f(jnp.array([0.2, 0.5]), jnp.array([3, 3]))
    assert np.abs(base - other_label).max() > 1e-3
    assert np.abs(base[0] - other_time[0]).max() > 1e-3
    np.testing.assert_allclose(base[1], other_time[1], rtol=1e-5, atol=1e-6)  # per-sample time
    # a scalar time is the same as that time for every sample
    np.testing.assert_allclose(f(jnp.asarray(0.5), jnp.array([3, 3])), base, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training():
    model = UNet(**{**TINY, "num_res_blocks": 1}, dropout=0.5)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    p = _randomize_zero_layers(_init(model, x, jnp.ones(2)), jax.random.PRNGKey(2))
    ev = lambda: model.apply({"params": p}, x, jnp.ones(2))  # noqa: E731
    np.testing.assert_array_equal(np.asarray(ev()), np.asarray(ev()))
    tr = lambda k: model.apply({"params": p}, x, jnp.ones(2), train=True, rngs={"dropout": k})  # noqa: E731
    assert float(jnp.abs(tr(jax.random.PRNGKey(0)) - tr(jax.random.PRNGKey(1))).max()) > 1e-4


def test_checkpoint_keys_are_explicit():
    model = UNet(**TINY, num_classes=10)
    p = _init(model, jnp.zeros((1, 8, 8, 1)), jnp.ones(1), label=jnp.zeros(1, jnp.int32))
    assert {"conv_in", "time_embed", "label_embed", "down_0_res_0", "down_0_downsample", "down_1_res_0",
            "down_1_attn_0", "mid_res_0", "mid_attn", "mid_res_1", "up_1_res_0", "up_1_upsample",
            "up_0_res_1", "norm_out", "conv_out"} <= set(p)


def test_bad_resolution_is_a_clear_error():
    model = UNet(**{**TINY, "channel_mult": (1, 2, 2, 2)})
    with pytest.raises(ValueError, match="not divisible"):
        _init(model, jnp.zeros((1, 4, 4, 1)), jnp.ones(1))


def test_bfloat16_compute_keeps_float32_params_and_output():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    f32 = UNet(**TINY, num_classes=10)
    bf16 = UNet(**TINY, num_classes=10, dtype=jnp.bfloat16)
    p = _randomize_zero_layers(_init(f32, x, jnp.ones(2), label=jnp.zeros(2, jnp.int32)), jax.random.PRNGKey(2))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(_init(bf16, x, jnp.ones(2), label=jnp.zeros(2, jnp.int32))))
    a = f32.apply({"params": p}, x, jnp.ones(2) * 0.3, label=jnp.array([1, 2]))
    b = bf16.apply({"params": p}, x, jnp.ones(2) * 0.3, label=jnp.array([1, 2]))
    assert b.dtype == jnp.float32
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert 0 < rel < 0.05  # bf16 rounding, nothing worse
