"""Attention-map reuse and feature caching (sampling.transforms.attention_reuse,
feature_cache) on a tiny UNet."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.contract import Modes
from diffusion.nn.attention import MultiHeadAttention
from diffusion.nn.denoiser import Denoiser
from diffusion.nn.unet import UNet
from diffusion.schedules import make_schedule
from sampling import loop
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.transforms import AttentionReuse, FeatureCache, Guided, TimeShift
from sampling.transforms.schedules import hurry, reuse_steps, uniform_full
from tests.sampling.toys import make_solver

SCHED = make_schedule("linear")
NET = UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8, 4), num_heads=2, num_classes=3)
DEN = Denoiser(NET, SCHED, pred_type="x0")  # bounded outputs: a random eps-net explodes over a chain
STEPS = 6


@functools.lru_cache(maxsize=None)
def params():
    """Init params plus noise: the zero-initialised output layers would hide attention."""
    p = NET.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), label=jnp.zeros((1,), jnp.int32))["params"]
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(tree, [w + 0.05 * jax.random.normal(k, w.shape) for w, k in zip(leaves, keys)])


def inputs(b=4):
    x = jax.random.normal(jax.random.PRNGKey(2), (b, 8, 8, 1))
    return x, {"label": jnp.arange(b, dtype=jnp.int32) % 3}


def run(den, solver="ddim", solver_wrap=lambda s: s):
    x, cond = inputs()
    grid = make_grid("trailing", STEPS, SCHED)
    return np.asarray(sample(den, params(), solver_wrap(make_solver(solver, SCHED)), grid, x, cond, jax.random.PRNGKey(3)))


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_all_recompute_stack_equals_the_baseline_with_a_multi_call_solver():
    """Schedules that reuse nothing leave the sample as it was, up to float32 rounding (the
    programs differ by a lax.cond per call, so XLA may fuse and reassociate differently): both
    transforms stacked, under F-PNDM, whose warm start makes 4 calls per step inside the
    lax.cond, so the cache is threaded through each."""
    stack = FeatureCache(AttentionReuse(DEN, np.zeros(STEPS, bool)), np.ones(STEPS, bool))
    _close(run(stack, "fpndm"), run(DEN, "fpndm"))


def test_reuse_and_caching_change_the_output_only_when_used():
    base = run(DEN)
    reused = run(AttentionReuse(DEN, hurry(STEPS, 3)))
    cached = run(FeatureCache(DEN, uniform_full(STEPS, 2)))
    scale = np.abs(base).max()
    assert 1e-3 * scale < np.abs(reused - base).max() < 0.5 * scale
    assert 1e-3 * scale < np.abs(cached - base).max() < 0.5 * scale


def test_reuse_with_maps_of_the_same_input_is_exact():
    """Storing the maps of (x, t), then reusing them at (x, t), is the plain call."""
    x, cond = inputs()
    t = jnp.full((4,), 0.7)
    cache = DEN.init_cache(params(), x, cond, modes=Modes(attention="store"))
    plain, empty = DEN(params(), x, t, cond)
    assert empty == {}
    stored, cache = DEN(params(), x, t, cond, cache=cache, modes=Modes(attention="store"))
    reused, _ = DEN(params(), x, t, cond, cache=cache, modes=Modes(attention="reuse"))
    np.testing.assert_allclose(np.asarray(stored.eps), np.asarray(plain.eps), atol=1e-6)
    np.testing.assert_allclose(np.asarray(reused.eps), np.asarray(plain.eps), atol=1e-5)
    # maps from another input change the result
    other, _ = DEN(params(), x + 1.0, t, cond, cache=cache, modes=Modes(attention="reuse"))
    assert np.abs(np.asarray(other.eps) - np.asarray(DEN(params(), x + 1.0, t, cond)[0].eps)).max() > 1e-3


def test_reuse_is_cached_map_times_current_values():
    """out = A_cached v_now through the output projection, against a NumPy reference."""
    mha = MultiHeadAttention(num_heads=2)
    x1 = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 6))
    x2 = jax.random.normal(jax.random.PRNGKey(5), (2, 5, 6))
    p = mha.init(jax.random.PRNGKey(6), x1)["params"]
    p = jax.tree.map(lambda w: w + 0.3 * jnp.ones_like(w), p)  # non-zero output projection
    _, maps = mha.apply({"params": p}, x1, "store", mutable=["attention_maps"])
    out = mha.apply({"params": p, **maps}, x2, "reuse")
    q = np.einsum("blc,chd->blhd", x1, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("blc,chd->blhd", x1, p["key"]["kernel"]) + p["key"]["bias"]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(3.0)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    v = np.einsum("blc,chd->blhd", x2, p["value"]["kernel"]) + p["value"]["bias"]
    ref = np.einsum("bhqk,bkhd->bqhd", a, v)
    ref = np.einsum("bqhd,hdc->bqc", ref, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("branch", range(NET.num_branches))
def test_retrieving_features_of_the_same_input_is_exact(branch):
    """Every skip branch: a retrieve step fed the features stored from the same (x, t)
    reproduces the full network (the shallow path is wired exactly)."""
    x, cond = inputs()
    t = jnp.full((4,), 0.4)
    store, retrieve = Modes(features="store", feature_branch=branch), Modes(features="retrieve", feature_branch=branch)
    cache = DEN.init_cache(params(), x, cond, modes=store)
    plain, _ = DEN(params(), x, t, cond)
    _, cache = DEN(params(), x, t, cond, cache=cache, modes=store)
    got, _ = DEN(params(), x, t, cond, cache=cache, modes=retrieve)
    np.testing.assert_allclose(np.asarray(got.eps), np.asarray(plain.eps), atol=1e-5)


def test_changing_schedules_does_not_recompile():
    first = run(AttentionReuse(DEN, hurry(STEPS, 1)))
    before = loop._chain_jit._cache_size()
    later = [run(AttentionReuse(DEN, s)) for s in (hurry(STEPS, 3), reuse_steps(STEPS, [2, 4]))]
    assert loop._chain_jit._cache_size() == before
    assert not np.array_equal(first, later[0]) and not np.array_equal(later[0], later[1])


def test_composes_with_guidance_and_time_shift():
    """Both transforms under Guided (each branch keeps its own maps: the cache covers
    [2B]) and with a time-shifted solver; all-recompute equals the plain guided sampler."""
    shifted = lambda s: TimeShift(s, 40.0, 300.0)  # noqa: E731
    base = run(Guided(DEN, 2.0, null_label=3), "ddim", shifted)
    stack = FeatureCache(AttentionReuse(DEN, np.zeros(STEPS, bool)), np.ones(STEPS, bool))
    _close(run(Guided(stack, 2.0, null_label=3), "ddim", shifted), base)
    x, cond = inputs()
    cache = Guided(AttentionReuse(DEN, hurry(STEPS, 2)), 2.0, null_label=3).init_cache(params(), x, cond, STEPS)
    assert all(leaf.shape[0] == 8 for leaf in jax.tree.leaves(cache))
    on = run(Guided(FeatureCache(AttentionReuse(DEN, hurry(STEPS, 2)), uniform_full(STEPS, 2)), 2.0, null_label=3),
             "ddim", shifted)
    assert np.isfinite(on).all() and np.abs(on - base).max() > 1e-4


def test_schedule_length_must_match_the_steps():
    with pytest.raises(ValueError, match="has 4 entries but sampling takes 6 steps"):
        run(AttentionReuse(DEN, np.zeros(4, bool)))
    with pytest.raises(ValueError, match="has 7 entries but sampling takes 6 steps"):
        run(FeatureCache(DEN, np.ones(7, bool)))


def _flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_a_reuse_step_skips_the_query_key_and_map_flops():
    """XLA's cost analysis: compute - reuse >= the projections and q k^T of every
    self-attention layer (closed form), and not much more (softmax, a few elementwise)."""
    x, cond = inputs()
    t = jnp.full((4,), 0.5)
    cache = DEN.init_cache(params(), x, cond, modes=Modes(attention="store"))
    full = _flops(lambda p, c: DEN(p, x, t, cond, cache=c, modes=Modes(attention="store")), params(), cache)
    reuse = _flops(lambda p, c: DEN(p, x, t, cond, cache=c, modes=Modes(attention="reuse")), params(), cache)
    b, expected = 4, 0.0
    for res, ch, layers in ((8, 8, 3), (4, 16, 4)):  # (H, channels, self-attention layers) of NET
        tokens = res * res
        projections = 2 * (2 * b * tokens * ch * ch)  # query and key
        scores = 2 * b * tokens * tokens * ch  # q k^T over all heads
        expected += layers * (projections + scores)
    saved = full - reuse
    assert expected <= saved <= 1.5 * expected, (full, reuse, expected)
