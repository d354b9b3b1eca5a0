"""Attention weights in bf16 compute: float32 logits and softmax, so the weights are the
float64 ones rounded to bf16."""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.nn.attention import attention_weights


def _reference(q, k):
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    logits = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_bf16_weights_are_float64_ones_to_bf16_rounding():
    kq, kk = jax.random.split(jax.random.key(0))
    # sharp maps: logits of magnitude ~50, where bf16 logits would be 0.25 apart
    q = (4 * jax.random.normal(kq, (2, 2, 16, 64))).astype(jnp.bfloat16)
    k = (4 * jax.random.normal(kk, (2, 2, 24, 64))).astype(jnp.bfloat16)
    ref = _reference(q, k)
    assert ref.max(-1).min() > 0.05  # sharp maps: every query's largest weight is above 5%
    got = np.asarray(attention_weights(q, k), np.float64)
    assert attention_weights(q, k).dtype == jnp.bfloat16
    np.testing.assert_allclose(got, ref, rtol=2**-8, atol=1e-6)


def test_float32_weights_match_float64():
    kq, kk = jax.random.split(jax.random.key(1))
    q, k = jax.random.normal(kq, (1, 3, 8, 16)), jax.random.normal(kk, (1, 3, 8, 16))
    np.testing.assert_allclose(np.asarray(attention_weights(q, k)), _reference(q, k), rtol=1e-5, atol=1e-7)
