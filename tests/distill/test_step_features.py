"""Encoder / decoder features along a trajectory (TiUE's motivation measurement)."""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.nn.denoiser import Denoiser
from sampling.loop import sample
from sampling.spec import make_spec
from distill.step_features import consecutive_cosine, consecutive_relative_change, features_at, halves, trajectory_features
from tests.sampling.test_loopfree import CAPS, LABEL, NET, PARAMS, SCHED, X

DEN = Denoiser(NET, SCHED, "v")


def test_the_halves_are_tiues_encoder_and_decoder():
    """The last decoder block's output through silu(norm_out) and conv_out is the network's
    output; the last encoder block's is the split's EncoderFeatures.h."""
    t = jnp.array([0.2, 0.5, 0.9])
    enc_blocks, dec_blocks = features_at(DEN, PARAMS, X, t, {"label": LABEL})
    assert list(enc_blocks)[0] == "conv_in" and list(enc_blocks)[-1] == "mid_res_1"
    assert all(n.startswith("up_") for n in dec_blocks) and "time_embed" not in enc_blocks
    enc, dec = list(enc_blocks.values())[-1], list(dec_blocks.values())[-1]
    c = dec.shape[-1]
    h = nn.silu(nn.GroupNorm(num_groups=math.gcd(32, c)).apply({"params": PARAMS["norm_out"]}, dec))
    out = nn.Conv(1, (3, 3), padding="SAME").apply({"params": PARAMS["conv_out"]}, h)
    np.testing.assert_allclose(out, NET.apply({"params": PARAMS}, X, t, LABEL), atol=1e-5)
    np.testing.assert_array_equal(enc, NET.apply({"params": PARAMS}, X, t, LABEL, method="encode").h)


def test_trajectory_features_are_taken_at_the_solvers_states():
    _, solver, grid = make_spec("ddim", 4).build(DEN, CAPS)
    cond = {"label": LABEL}
    enc, dec = trajectory_features(DEN, PARAMS, solver, grid, X, cond)
    assert all(f.shape[0] == 4 for f in [*enc.values(), *dec.values()])
    x_last_input = sample(DEN, PARAMS, solver, grid[:-1], X, cond)  # the state at grid[3]
    want = features_at(DEN, PARAMS, x_last_input, grid[3], cond)
    for got, half in ((enc, want[0]), (dec, want[1])):
        for name in half:
            np.testing.assert_allclose(got[name][3], half[name], atol=1e-5)
    np.testing.assert_allclose(enc["mid_res_1"][0], features_at(DEN, PARAMS, X, grid[0], cond)[0]["mid_res_1"],
                               atol=1e-5)  # float32 rounding: jitted alone vs inside the trajectory (1.3e-6 seen)


def test_consecutive_cosine_against_float64():
    f = np.random.default_rng(0).normal(size=(5, 3, 4, 4, 2))
    want = [np.mean([np.dot(f[k + 1, b].ravel(), f[k, b].ravel())
                     / (np.linalg.norm(f[k + 1, b]) * np.linalg.norm(f[k, b])) for b in range(3)]) for k in range(4)]
    np.testing.assert_allclose(consecutive_cosine(jnp.asarray(f)), want, atol=1e-6)
    np.testing.assert_allclose(consecutive_cosine(jnp.ones((3, 2, 4))), [1.0, 1.0], atol=1e-6)
    want = [np.mean([np.linalg.norm(f[k + 1, b] - f[k, b]) / np.linalg.norm(f[k, b]) for b in range(3)])
            for k in range(4)]
    np.testing.assert_allclose(consecutive_relative_change(jnp.asarray(f)), want, rtol=1e-5)


def test_halves_of_the_sd_unet_and_a_foreign_network():
    names = ["time_embedding_linear_1", "conv_in", "down_blocks_0_resnets_0", "mid_block_resnets_0",
             "up_blocks_0_resnets_0", "up_blocks_0_upsamplers_0_conv", "conv_norm_out", "conv_out"]
    assert halves(names) == (["conv_in", "down_blocks_0_resnets_0", "mid_block_resnets_0"],
                             ["up_blocks_0_resnets_0", "up_blocks_0_upsamplers_0_conv"])
    with pytest.raises(ValueError, match="not a Kairos UNet"):
        halves(["conv_in", "conv_out"])
