"""LoRA adapters (diffusion/train/lora.py): exact start, the merge against float64, a frozen
base, and training through make_train_step with to_network."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from diffusion.train import lora
from diffusion.train.state import create_train_state
from diffusion.train.step import make_train_step
from tests.sampling.test_loopfree import LABEL, NET, PARAMS, X


def test_targets_are_the_attention_projections():
    paths = lora.target_paths(PARAMS)
    assert paths and all(p.split("/")[-2] in lora.TARGETS for p in paths)
    assert all(paths[p] == (2 if p.split("/")[-2] == "out" else 1) for p in paths)
    assert not any(p.startswith("conv_out") or "res" in p.split("/")[0] for p in paths)
    assert len(paths) == 4 * sum(1 for k in PARAMS if "attn" in k)  # q, k, v, out of every attention block


def test_zero_initialised_adapters_give_the_base_exactly():
    tree = lora.init(PARAMS, 2, jax.random.PRNGKey(0))
    merged = lora.merge(tree, alpha=4.0)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(PARAMS)):
        np.testing.assert_array_equal(a, b)


def test_the_merge_against_float64():
    tree = lora.init(PARAMS, 2, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    tree["adapters"] = {p: {"a": ab["a"], "b": jnp.asarray(rng.normal(size=ab["b"].shape), jnp.float32)}
                        for p, ab in tree["adapters"].items()}
    merged = traverse_util.flatten_dict(lora.merge(tree, alpha=3.0))
    base = traverse_util.flatten_dict(PARAMS)
    for path, in_axes in lora.target_paths(PARAMS).items():
        key = tuple(path.split("/"))
        a, b = (np.asarray(tree["adapters"][path][n], np.float64) for n in ("a", "b"))
        kernel = np.asarray(base[key], np.float64)
        want = (kernel.reshape(int(np.prod(kernel.shape[:in_axes])), -1) + 1.5 * a @ b).reshape(kernel.shape)
        np.testing.assert_allclose(merged[key], want, rtol=1e-5, atol=1e-6)
    untouched = [k for k in base if "/".join(k) not in lora.target_paths(PARAMS)]
    assert all(np.array_equal(merged[k], base[k]) for k in untouched)


def test_training_moves_only_the_adapters_and_the_ema_is_of_merged_params():
    tree = lora.init(PARAMS, 2, jax.random.PRNGKey(0))
    opt = lora.optimizer(optax.adam(1e-2))
    state = create_train_state(PARAMS, optax.adam(1e-2), jax.random.PRNGKey(1))  # as with_lora: made, then wrapped
    state = state.replace(params=tree, opt_state=opt.init(tree))
    # Adam keeps moments for the adapters only
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state))
    adapter_size = sum(x.size for x in jax.tree.leaves(tree["adapters"]))
    assert moments <= 2 * adapter_size + 8

    def loss_fn(params, batch, rng, st):  # sees network params
        out = NET.apply({"params": params}, batch, jnp.full((3,), 0.5), LABEL)
        return jnp.mean((out - 1.0) ** 2), {}

    merge = lambda t: lora.merge(t, 2.0)  # noqa: E731
    seen = []
    after = lambda st, carry: seen.append(jax.tree.structure(st.params)) or st  # noqa: E731
    step = jax.jit(make_train_step(loss_fn, opt, ema_decay=0.0, ema_warmup=False, after_update=after,
                                   to_network=merge))
    losses = []
    for _ in range(5):
        state, metrics = step(state, X)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    for a, b in zip(jax.tree.leaves(state.params["base"]), jax.tree.leaves(PARAMS)):
        np.testing.assert_array_equal(a, b)
    assert all(np.abs(ab["b"]).max() > 0 for ab in state.params["adapters"].values())
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(merge(state.params))):
        np.testing.assert_allclose(a, b, atol=1e-7)  # decay 0: the EMA is the merged params
    assert seen[0] == jax.tree.structure(PARAMS)  # after_update saw network params


def test_bad_ranks_are_named():
    with pytest.raises(ValueError, match="lora_rank must be >= 1"):
        lora.init(PARAMS, 0, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="exceeds the smaller side"):
        lora.init(PARAMS, 999, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="no attention projection"):
        lora.init({"conv_in": {"kernel": jnp.zeros((3, 3, 1, 4))}}, 2, jax.random.PRNGKey(0))


def test_targets_pick_the_projections_and_the_default_is_all_four():
    """TiUE's fake score: target_modules=["to_q", "to_v"] -> adapters on query and value only; the
    default (every other caller) stays all four, with the same draws as before."""
    qv = lora.init(PARAMS, 2, jax.random.PRNGKey(0), targets=("query", "value"))
    assert sorted(qv["adapters"]) == sorted(p for p in lora.target_paths(PARAMS) if p.split("/")[-2] in
                                            ("query", "value"))
    assert len(qv["adapters"]) == 2 * sum(1 for k in PARAMS if "attn" in k)
    default = lora.init(PARAMS, 2, jax.random.PRNGKey(0))
    assert sorted(default["adapters"]) == sorted(lora.target_paths(PARAMS))
    flat = traverse_util.flatten_dict(PARAMS)
    for i, (path, in_axes) in enumerate(sorted(lora.target_paths(PARAMS).items())):  # N(0, 1 / d_in), as before
        d_in = int(np.prod(flat[tuple(path.split("/"))].shape[:in_axes]))
        want = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), i), (d_in, 2)) / np.sqrt(d_in)
        np.testing.assert_array_equal(default["adapters"][path]["a"], want)
    with pytest.raises(ValueError, match="LoRA targets must be a non-empty subset"):
        lora.init(PARAMS, 2, jax.random.PRNGKey(0), targets=("to_q",))
    with pytest.raises(ValueError, match="unknown LoRA init kind"):
        lora.init(PARAMS, 2, jax.random.PRNGKey(0), init_kind="xavier")


def test_peft_init_is_torchs_kaiming_uniform_with_a_sqrt5():
    """PEFT's LoRA A: nn.init.kaiming_uniform_(A, a=sqrt(5)) on [r, d_in]: U(+-gain sqrt(3 / d_in)),
    gain = sqrt(2 / (1 + 5)): bound 1 / sqrt(d_in), variance 1 / (3 d_in); B zero."""
    torch = pytest.importorskip("torch")
    d_in, rank = 64, 64
    weights = {"self_attn": {"query": {"kernel": jnp.zeros((d_in, 4, 16))}}}
    a = np.concatenate([np.asarray(lora.init(weights, rank, jax.random.PRNGKey(s), init_kind="peft")
                                   ["adapters"]["self_attn/query/kernel"]["a"]).ravel() for s in range(8)])
    gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    bound = gain * math.sqrt(3.0 / d_in)
    np.testing.assert_allclose(bound, 1 / math.sqrt(d_in), rtol=1e-12)
    ref = torch.nn.init.kaiming_uniform_(torch.empty(rank, d_in, dtype=torch.float64), a=math.sqrt(5)).numpy()
    assert np.abs(a).max() <= bound and np.abs(ref).max() <= bound
    assert np.abs(a).max() > 0.99 * bound
    np.testing.assert_allclose(a.var(), 1 / (3 * d_in), rtol=0.03)
    np.testing.assert_allclose(ref.var(), 1 / (3 * d_in), rtol=0.06)


def test_gaussian_init_is_pefts_init_lora_weights_gaussian():
    """PEFT's ``init_lora_weights="gaussian"`` (what PSO's reference trains with): A ~ N(0, 1 / r^2)
    whatever the width, B zero; it reaches the train loop through ``train.lora_init``."""
    d_in, rank = 64, 16
    weights = {"self_attn": {"query": {"kernel": jnp.zeros((d_in, 4, 16))}}}
    trees = [lora.init(weights, rank, jax.random.PRNGKey(s), init_kind="gaussian") for s in range(8)]
    a = np.concatenate([np.asarray(t["adapters"]["self_attn/query/kernel"]["a"]).ravel() for t in trees])
    np.testing.assert_allclose(a.std(), 1 / rank, rtol=0.03)
    assert all(not np.asarray(t["adapters"]["self_attn/query/kernel"]["b"]).any() for t in trees)
    from configs import digits_pso

    assert digits_pso.get_config("lora").train.lora_init == "gaussian"
