"""Encoder / decoder features along a trajectory (TiUE's motivation measurement)."""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.nn.denoiser import Denoiser
from sampling.loop import sample
from sampling.spec import make_spec
from sampling.step_features import consecutive_cosine, decoder_feature_name, features_at, trajectory_features
from tests.sampling.test_loopfree import CAPS, LABEL, NET, PARAMS, SCHED, X

DEN = Denoiser(NET, SCHED, "v")


def test_the_decoder_feature_is_what_the_output_head_reads():
    """silu(norm_out(feature)) through conv_out is the network's output: the captured
    tensor is the last up block's output, not some other block's."""
    t = jnp.array([0.2, 0.5, 0.9])
    enc, dec = features_at(DEN, PARAMS, X, t, {"label": LABEL})
    c = dec.shape[-1]
    h = nn.silu(nn.GroupNorm(num_groups=math.gcd(32, c)).apply({"params": PARAMS["norm_out"]}, dec))
    out = nn.Conv(1, (3, 3), padding="SAME").apply({"params": PARAMS["conv_out"]}, h)
    np.testing.assert_allclose(out, NET.apply({"params": PARAMS}, X, t, LABEL), atol=1e-5)
    np.testing.assert_array_equal(enc, NET.apply({"params": PARAMS}, X, t, LABEL, method="encode").h)


def test_trajectory_features_are_taken_at_the_solvers_states():
    _, solver, grid = make_spec("ddim", 4).build(DEN, CAPS)
    cond = {"label": LABEL}
    enc, dec = trajectory_features(DEN, PARAMS, solver, grid, X, cond)
    assert enc.shape[0] == dec.shape[0] == 4
    x_last_input = sample(DEN, PARAMS, solver, grid[:-1], X, cond)  # the state at grid[3]
    want = features_at(DEN, PARAMS, x_last_input, grid[3], cond)
    np.testing.assert_allclose(enc[3], want[0], atol=1e-5)
    np.testing.assert_allclose(dec[3], want[1], atol=1e-5)
    np.testing.assert_allclose(enc[0], features_at(DEN, PARAMS, X, grid[0], cond)[0], atol=1e-6)


def test_consecutive_cosine_against_float64():
    f = np.random.default_rng(0).normal(size=(5, 3, 4, 4, 2))
    want = [np.mean([np.dot(f[k + 1, b].ravel(), f[k, b].ravel())
                     / (np.linalg.norm(f[k + 1, b]) * np.linalg.norm(f[k, b])) for b in range(3)]) for k in range(4)]
    np.testing.assert_allclose(consecutive_cosine(jnp.asarray(f)), want, atol=1e-6)
    np.testing.assert_allclose(consecutive_cosine(jnp.ones((3, 2, 4))), [1.0, 1.0], atol=1e-6)


def test_a_network_without_an_output_norm_is_named():
    with pytest.raises(ValueError, match="not a Kairos UNet"):
        decoder_feature_name(["conv_in", "conv_out"])
