"""The video UNet (factorized space-time, per-frame time): with its temporal blocks at
their zero start it is the image UNet run frame by frame at each frame's own time; the
temporal blocks mix frames in order; no weight depends on the frame count. The temporal
block is FVDM's per-frame adaLN-Zero (issue 26), checked against a float64 re-derivation of
the reference's block, trainable from its zero start, and the block before issue 26 is kept
bit for bit for old checkpoints."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.contract import Modes
from diffusion.nn.attention import MAPS, MultiHeadAttention, TemporalAttentionBlock
from diffusion.nn.embeddings import sinusoidal_embedding
from diffusion.nn.unet import UNet
from tests.nn.test_unet import TINY, _randomize_zero_layers

B, F = 2, 3


def _video_and_times():
    x = jax.random.normal(jax.random.PRNGKey(1), (B, F, 8, 8, 1))
    t = jax.random.uniform(jax.random.PRNGKey(2), (B, F))
    return x, t


def _params(model, x, t, key=3, randomize_temporal=False):
    p = model.init(jax.random.PRNGKey(0), x, t, label=jnp.zeros((x.shape[0],), jnp.int32))["params"]
    image_part = {k: v for k, v in p.items() if "temporal" not in k}
    image_part = _randomize_zero_layers(image_part, jax.random.PRNGKey(key))
    temporal = {k: v for k, v in p.items() if "temporal" in k}
    if randomize_temporal:
        temporal = _randomize_zero_layers(temporal, jax.random.PRNGKey(key + 1))
    return {**image_part, **temporal}, image_part


def test_fresh_temporal_blocks_give_the_image_unet_per_frame_at_its_own_time():
    video, image = UNet(**TINY, num_classes=10, temporal=True), UNet(**TINY, num_classes=10)
    x, t = _video_and_times()
    label = jnp.array([3, 7])
    p, p_image = _params(video, x, t)
    assert any("temporal" in k for k in p) and set(p_image) < set(p)
    out = video.apply({"params": p}, x, t, label=label)
    assert out.shape == (B, F, 8, 8, 1)
    image_apply = jax.jit(image.apply)  # one compile for the three frames (op by op: every op at a new shape)
    for f in range(F):
        ref = image_apply({"params": p_image}, x[:, f], t[:, f], label=label)
        np.testing.assert_allclose(np.asarray(out[:, f]), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_a_shared_time_equals_the_same_time_given_per_frame():
    video = UNet(**TINY, temporal=True)
    x, _ = _video_and_times()
    t_b = jnp.array([0.2, 0.7])
    p, _ = _params(video, x, jnp.zeros((B, F)), randomize_temporal=True)
    shared = video.apply({"params": p}, x, t_b)
    per_frame = video.apply({"params": p}, x, jnp.repeat(t_b[:, None], F, axis=1))
    np.testing.assert_array_equal(np.asarray(shared), np.asarray(per_frame))
    scalar = video.apply({"params": p}, x, jnp.asarray(0.2))
    np.testing.assert_array_equal(np.asarray(scalar[0]), np.asarray(shared[0]))


def test_temporal_blocks_mix_frames_and_know_their_order():
    video = UNet(**TINY, temporal=True)
    x, t = _video_and_times()
    p, _ = _params(video, x, t, randomize_temporal=True)
    out = np.asarray(video.apply({"params": p}, x, t))
    changed = np.asarray(video.apply({"params": p}, x.at[:, 2].add(1.0), t))
    assert np.abs(changed[:, 0] - out[:, 0]).max() > 1e-3  # frame 2's content reaches frame 0
    same = jnp.full((B, F), 0.5)
    still = jnp.repeat(x[:, :1], F, axis=1)  # every frame alike: only the frame position differs
    frames = np.asarray(video.apply({"params": p}, still, same))
    assert np.abs(frames[:, 0] - frames[:, 1]).max() > 1e-4


def test_the_same_weights_run_on_any_frame_count_and_samples_stay_apart():
    video = UNet(**TINY, temporal=True)
    x, t = _video_and_times()
    p, _ = _params(video, x, t, randomize_temporal=True)
    longer = jax.random.normal(jax.random.PRNGKey(5), (1, 5, 8, 8, 1))
    apply = jax.jit(video.apply)  # new shapes: one compile each instead of every op's
    assert apply({"params": p}, longer, jnp.full((1, 5), 0.3)).shape == (1, 5, 8, 8, 1)
    one = apply({"params": p}, x[:1], t[:1])
    both = video.apply({"params": p}, x, t)
    np.testing.assert_allclose(np.asarray(one[0]), np.asarray(both[0]), rtol=1e-5, atol=1e-5)


def test_attention_reuse_covers_the_temporal_maps():
    video = UNet(**TINY, temporal=True)
    x, t = _video_and_times()
    p, _ = _params(video, x, t, randomize_temporal=True)
    out, state = video.apply({"params": p}, x, t, modes=Modes(attention="store"), mutable=[MAPS])
    temporal_maps = {k: v for k, v in state[MAPS].items() if "temporal" in k}
    assert temporal_maps and jax.tree.leaves(temporal_maps)[0].shape[-2:] == (F, F)
    reused = video.apply({"params": p, MAPS: state[MAPS]}, x, t, modes=Modes(attention="reuse"))
    np.testing.assert_allclose(np.asarray(reused), np.asarray(out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, t_shape, match", [
    ((B, 8, 8, 1), (B,), "a video UNet takes x \\[B, F, H, W, C\\]"),
    ((B, F, 8, 8, 1), (B, F + 1), "t of shape"),
])
def test_bad_shapes_are_named(shape, t_shape, match):
    video = UNet(**TINY, temporal=True)
    with pytest.raises(ValueError, match=match):
        video.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(t_shape))


def test_an_image_unet_refuses_a_video():
    with pytest.raises(ValueError, match="config.model.temporal=True"):
        UNet(**TINY).init(jax.random.PRNGKey(0), jnp.zeros((B, F, 8, 8, 1)), jnp.zeros((B,)))


# ------------------------------------------------------------------------------------------
# The temporal block: FVDM's per-frame adaLN-Zero (issue 26)

BF, HW, C, D, HEADS = (2, 3), (2, 2), 8, 16, 2  # (B, F), (H, W), width, embedding width, heads


def _block_inputs():
    (b, f), (h, w) = BF, HW
    x = jax.random.normal(jax.random.PRNGKey(0), (b * f, h, w, C))
    emb = jax.random.normal(jax.random.PRNGKey(1), (b * f, D))
    return x, emb


def _random(params, key, scale=0.3):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten([scale * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)])


def _latte_temporal_block_float64(params, x, emb, frames, heads):
    """FVDM@9373f998 ``models/latte_video.py:295-307`` (``TransformerBlock_Temp``, its attention
    half) in float64 NumPy: ``shift, scale, gate = Linear(SiLU(c))`` per frame (l.304, the
    conditioning repeated over locations at l.488), ``norm1`` a LayerNorm without affine at eps
    1e-6 (l.284), ``modulate_temp(x, shift, scale) = x * (1 + scale) + shift`` (l.35-36), then
    ``x + gate * attn(.)`` (l.307); plus our frame position on the attention's input (the
    reference adds its fixed ``temp_embed`` to the stream once, l.521-522: backbone)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x, emb = np.asarray(x, np.float64), np.asarray(emb, np.float64)
    bf, h, w, c = x.shape
    b = bf // frames
    tok = x.reshape(b, frames, h * w, c).transpose(0, 2, 1, 3)  # [b, hw, F, c]
    mod = (emb / (1 + np.exp(-emb))) @ p["ada"]["kernel"] + p["ada"]["bias"]  # [b * F, 3c]
    mod = mod.reshape(b, 1, frames, 3 * c)
    shift, scale, gate = mod[..., :c], mod[..., c:2 * c], mod[..., 2 * c:]
    normed = (tok - tok.mean(-1, keepdims=True)) / np.sqrt(tok.var(-1, keepdims=True) + 1e-6)
    half = c // 2
    angle = np.arange(frames)[:, None] * np.exp(-np.log(1e4) * np.arange(half) / half)
    z = normed * (1 + scale) + shift + np.concatenate([np.cos(angle), np.sin(angle)], -1)
    a = p["temporal_attn"]
    q, k, v = (np.einsum("...c,chd->...hd", z, a[n]["kernel"]) + a[n]["bias"] for n in ("query", "key", "value"))
    logits = np.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(c // heads)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    o = np.einsum("...hd,hdc->...c", np.einsum("...hqk,...khd->...qhd", weights, v), a["out"]["kernel"])
    out = tok + gate * (o + a["out"]["bias"])
    return out.transpose(0, 2, 1, 3).reshape(bf, h, w, c)


def test_the_temporal_block_is_fvdms_per_frame_adaln_zero_by_a_float64_rederivation():
    x, emb = _block_inputs()
    block = TemporalAttentionBlock(HEADS)
    fresh = block.init(jax.random.PRNGKey(2), x, emb, BF[1])["params"]
    assert set(fresh) == {"ada", "temporal_attn"}  # the LayerNorm has no affine (norm1, l.284)
    assert fresh["ada"]["kernel"].shape == (D, 3 * C) and not np.any(np.asarray(fresh["ada"]["kernel"]))
    params = _random(fresh, jax.random.PRNGKey(3))
    out = np.asarray(block.apply({"params": params}, x, emb, BF[1]))
    ref = _latte_temporal_block_float64(params, x, emb, BF[1], HEADS)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)  # 9e-7 here
    assert np.abs(ref - np.asarray(x)).max() > 0.1  # the block does something
    np.testing.assert_array_equal(np.asarray(block.apply({"params": fresh}, x, emb, BF[1])), np.asarray(x))


def test_each_frame_is_modulated_by_its_own_time():
    """Every frame alike, only frame 1's embedding changed: frame 1's output moves under
    adaLN-Zero; the block before issue 26 takes no time, so nothing moves."""
    (b, f), _ = BF, HW
    x, emb = _block_inputs()
    still = jnp.repeat(x.reshape(b, f, *x.shape[1:])[:, :1], f, axis=1).reshape(x.shape)
    other = emb.reshape(b, f, D).at[:, 1].add(1.0).reshape(emb.shape)
    for cond, moves in (("adaln_zero", True), ("none", False)):
        block = TemporalAttentionBlock(HEADS, time_cond=cond)
        params = _random(block.init(jax.random.PRNGKey(2), x, emb, f)["params"], jax.random.PRNGKey(3))
        base = np.asarray(block.apply({"params": params}, still, emb, f)).reshape(b, f, -1)
        changed = np.asarray(block.apply({"params": params}, still, other, f)).reshape(b, f, -1)
        delta = np.abs(changed - base).max(axis=(0, 2))  # per frame
        if moves:
            assert delta[1] > 0.1 and delta[1] > delta[0], delta
        else:
            assert (delta == 0).all()


def _grad_norms(block, params, x, emb):
    g = jax.grad(lambda p: jnp.sum(block.apply({"params": p}, x, emb, BF[1]) ** 2))(params)
    return g, {k: float(np.sqrt(sum(np.sum(np.asarray(v) ** 2) for v in jax.tree.leaves(g[k])))) for k in g}


def test_the_fresh_block_trains_where_a_double_zero_start_never_would():
    """The gate starts at 0 (the reference zeroes its adaLN Linear, latte_video.py:432-434) and
    the attention's output projection does not (the reference's is xavier, l.400-405): the gate
    gets a gradient at the first step, and after one step so does the attention. With the
    output projection zeroed as well (the pre-issue-26 block's), both gradients are exactly 0,
    at the first step and after it: the block never trains."""
    x, emb = _block_inputs()
    block = TemporalAttentionBlock(HEADS)
    fresh = block.init(jax.random.PRNGKey(2), x, emb, BF[1])["params"]
    assert np.abs(np.asarray(fresh["temporal_attn"]["out"]["kernel"])).max() > 0  # not zero-initialised
    g, norms = _grad_norms(block, fresh, x, emb)
    assert norms["ada"] > 1.0 and norms["temporal_attn"] == 0.0  # 100.3 and 0: gate 0, no signal to attention yet
    g, norms = _grad_norms(block, jax.tree.map(lambda p, d: p - 1e-3 * d, fresh, g), x, emb)
    assert norms["ada"] > 1.0 and norms["temporal_attn"] > 1.0  # 78.5 and 10.9 after one step of lr 1e-3
    assert all(np.abs(np.asarray(g["temporal_attn"][n]["kernel"])).max() > 0 for n in ("query", "key", "value", "out"))
    dead = {**fresh, "temporal_attn": {**fresh["temporal_attn"], "out": jax.tree.map(
        jnp.zeros_like, fresh["temporal_attn"]["out"])}}
    g, norms = _grad_norms(block, dead, x, emb)
    assert norms == {"ada": 0.0, "temporal_attn": 0.0}
    _, norms = _grad_norms(block, jax.tree.map(lambda p, d: p - 1e-3 * d, dead, g), x, emb)
    assert norms == {"ada": 0.0, "temporal_attn": 0.0}


class _TemporalBlockBeforeIssue26(nn.Module):
    """``diffusion/nn/attention.py``'s ``TemporalAttentionBlock`` at 410f82e, verbatim but for
    its name: what the video checkpoints trained before issue 26 ran."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, frames: int, attention: str = "compute") -> jnp.ndarray:
        bf, h, w, c = x.shape
        b = bf // frames
        tokens = x.reshape(b, frames, h * w, c).transpose(0, 2, 1, 3).reshape(b * h * w, frames, c)
        normed = nn.LayerNorm(dtype=self.dtype, name="norm")(tokens)
        position = sinusoidal_embedding(jnp.arange(frames), c, scale=1.0).astype(normed.dtype)
        tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="temporal_attn")(
            normed + position, attention)
        return tokens.reshape(b, h * w, frames, c).transpose(0, 2, 1, 3).reshape(bf, h, w, c)


def test_time_cond_none_is_the_block_before_issue_26_bit_for_bit():
    x, emb = _block_inputs()
    old = _TemporalBlockBeforeIssue26(HEADS)
    params = _random(old.init(jax.random.PRNGKey(2), x, BF[1])["params"], jax.random.PRNGKey(3))
    new = TemporalAttentionBlock(HEADS, time_cond="none")
    new_fresh = new.init(jax.random.PRNGKey(2), x, emb, BF[1])["params"]
    assert jax.tree.structure(new_fresh) == jax.tree.structure(params)
    np.testing.assert_array_equal(np.asarray(new_fresh["temporal_attn"]["out"]["kernel"]), 0.0)  # as it was
    np.testing.assert_array_equal(np.asarray(new.apply({"params": params}, x, emb, BF[1])),
                                  np.asarray(old.apply({"params": params}, x, BF[1])))
    with pytest.raises(ValueError, match="config.model.temporal_cond"):
        TemporalAttentionBlock(HEADS, time_cond="film").init(jax.random.PRNGKey(2), x, emb, BF[1])


def test_old_video_work_directories_build_the_model_and_coin_they_trained_with():
    """``configs.common.upgrade_config``: a video ``config.json`` from before issue 26 (no
    ``temporal_cond``, no ``per_frame_group``) gets ``"none"`` and ``0``, so its checkpoint's
    parameter tree is the one the builder makes; today's video config gets the reference's
    choices; an image run's saved config upgrades to exactly today's (resumes unchanged)."""
    import json

    from configs.common import upgrade_config
    from configs.digits import get_config as digits_config
    from configs.moving_digits import get_config
    from diffusion.data.sources import DatasetInfo
    from orchestration.build.builders import build_unet
    from orchestration.workdir.directory import config_differences

    new = json.loads(get_config("smoke").to_json())
    assert new["model"]["temporal_cond"] == "adaln_zero" and new["diffusion"]["per_frame_group"] == 2
    old = json.loads(json.dumps(new))
    del old["model"]["temporal_cond"], old["diffusion"]["per_frame_group"]
    up = upgrade_config(old)
    assert up["model"]["temporal_cond"] == "none" and up["diffusion"]["per_frame_group"] == 0
    assert upgrade_config(new) == upgrade_config(json.loads(json.dumps(new)))  # today's: unchanged
    info = DatasetInfo((8, 8, 1), None, 10, num_frames=3)
    import ml_collections

    x, t = jnp.zeros((1, 3, 8, 8, 1)), jnp.zeros((1, 3))
    trees = {}
    for name, cfg in (("old", up), ("new", new)):
        unet = build_unet(ml_collections.ConfigDict(cfg["model"]), info)
        trees[name] = jax.eval_shape(unet.init, jax.random.PRNGKey(0), x, t)["params"]
    old_block = trees["old"]["mid_temporal"]
    assert set(old_block) == {"norm", "temporal_attn"} and set(trees["new"]["mid_temporal"]) == {"ada", "temporal_attn"}
    image = json.loads(digits_config().to_json())
    image_old = json.loads(json.dumps(image))
    del image_old["model"]["temporal_cond"], image_old["diffusion"]["per_frame_group"]
    assert config_differences(upgrade_config(image_old), image) == []
