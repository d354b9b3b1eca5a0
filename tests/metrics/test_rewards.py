"""The bundled rewards: traceable, equal to the numpy path of the digits CNN, and the thick
style's classifier separates held-out thick digits from plain ones."""

import jax
import numpy as np
import pytest

from diffusion.data.digits import load_digits
from diffusion.metrics import rewards
from diffusion.metrics.fd_digits import classify


def test_class_reward_is_the_cnns_log_probability_of_the_label():
    x, y = load_digits("heldout")
    x16 = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # pooled back to 8x8 like classify
    got = np.asarray(jax.jit(rewards.get("class"))(x16[:50], y[:50]))
    logits = classify(x[:50])[0].astype(np.float64)
    want = logits[np.arange(50), y[:50]] - np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_thick_reward_separates_the_held_out_styles():
    score = jax.jit(rewards.get("thick"))
    plain, thick = load_digits("heldout")[0], load_digits("heldout", thick=True)[0]
    s_plain, s_thick = np.asarray(score(plain, None)), np.asarray(score(thick, None))
    assert (s_plain < 0).mean() > 0.95 and (s_thick > 0).mean() > 0.95
    # monotone in stroke weight: a blend half way scores between the two
    s_mid = np.asarray(score((plain + thick) / 2, None))
    assert s_plain.mean() < s_mid.mean() < s_thick.mean()


def test_unknown_and_clashing_rewards_are_named():
    with pytest.raises(ValueError, match="unknown reward 'beauty'; registered: class, thick"):
        rewards.get("beauty")
    with pytest.raises(ValueError, match="already registered"):
        rewards.register("thick", lambda: None)
