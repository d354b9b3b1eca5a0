"""Reuse / caching schedules, the PHAST search and PSNR (pure NumPy, no sampling)."""

import numpy as np
import pytest

from diffusion.metrics.psnr import mean_psnr, psnr
from sampling.registry import BuildContext, ModelCaps, transform
from sampling.transforms.attention_reuse import schedule_of
from sampling.transforms.phast import search
from sampling.transforms.schedules import hurry, nonuniform_full, reuse_block, uniform_full


def parse_attention_reuse(text, steps):
    return schedule_of(transform("attention_reuse").parse_spec(text)["schedule"], steps, {})


def parse_feature_cache(text, steps):
    knobs = {"branch": 0, **transform("feature_cache").parse_spec(text)}
    caps = ModelCaps(feature_branches=2)
    return transform("feature_cache").build(None, knobs, BuildContext(steps, caps)).full


def test_hurry_and_blocks():
    assert np.flatnonzero(hurry(20, 5)).tolist() == [15, 16, 17, 18, 19]
    assert not hurry(20, 0).any()
    assert np.flatnonzero(reuse_block(20, 3, 4)).tolist() == [4, 5, 6]
    assert np.flatnonzero(parse_attention_reuse("steps:3,1,3", 5)).tolist() == [1, 3]
    with pytest.raises(ValueError, match="step 0 always computes"):
        parse_attention_reuse("steps:0,2", 5)
    with pytest.raises(ValueError, match="out of range"):
        reuse_block(10, 4, 8)


def test_uniform_and_nonuniform_feature_schedules():
    assert np.flatnonzero(uniform_full(10, 3)).tolist() == [0, 3, 6, 9]
    assert uniform_full(7, 1).all()
    full = nonuniform_full(50, 5, 20)
    idx = np.flatnonzero(full)
    assert len(idx) == 10 and idx[0] == 0  # ceil(50 / 5) full steps, the first at step 0
    assert np.diff(idx).min() < np.diff(idx).max()  # not uniform (positions: tests/sampling/test_deepcache_reference.py)
    np.testing.assert_array_equal(parse_feature_cache("nonuniform:5,20", 50), full)
    with pytest.raises(ValueError, match="CENTER < 50"):
        nonuniform_full(50, 5, 60)


def test_phast_finds_the_optimum_of_a_known_score():
    """Score = -(mismatches with a target schedule): swaps starting from HURRY reach it."""
    target = np.zeros(12, bool)
    target[[2, 5, 7, 10]] = True
    score = lambda s: -float(np.sum(s != target))  # noqa: E731
    best, best_score, history = search(score, 12, 4, max_evals=500)
    np.testing.assert_array_equal(best, target)
    assert best_score == 0.0
    assert history[0]["reuse_steps"] == [8, 9, 10, 11]  # started from HURRY
    assert all(h["score"] <= best_score for h in history)
    # the budget is respected
    assert len(search(score, 12, 4, max_evals=5)[2]) == 5


def test_schedule_specs_parse_to_canonical_form():
    reuse, cache = transform("attention_reuse"), transform("feature_cache")
    assert reuse.parse_spec("steps:3,1,3") == {"schedule": "steps:1,3"}
    assert reuse.parse_spec("steps:3/1") == {"schedule": "steps:1,3"}  # "/" for "," in sweeps
    assert cache.parse_spec("nonuniform:4/10") == {"schedule": "nonuniform:4,10"}
    for bad in ("soon:3", "hurry:x", "hurry:-1", "block:3", "hurry"):
        with pytest.raises(ValueError, match=f"bad attention_reuse '{bad}'"):
            reuse.parse_spec(bad)
    for bad in ("every:2", "uniform:0", "uniform:x", "nonuniform:3"):
        with pytest.raises(ValueError, match=f"bad feature_cache '{bad}'"):
            cache.parse_spec(bad)
    with pytest.raises(ValueError, match="reads a schedule searched by `python -m launch.phast`"):
        parse_attention_reuse("phast:3", 10)


def test_psnr_closed_form():
    ref = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 4, 4, 1))
    np.testing.assert_allclose(psnr(ref + 0.1, ref), 10 * np.log10(4 / 0.01), rtol=1e-9)
    assert mean_psnr(ref, ref) == 100.0
