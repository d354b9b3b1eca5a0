"""Multi-head self-attention over the pixels of a feature map, with map reuse across sampling steps."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.contract import ATTENTION_MODES
from diffusion.nn.blocks import group_norm


def heads_first(x: jnp.ndarray) -> jnp.ndarray:
    """``[B, L, H, D]`` -> ``[B, H, L, D]``.

    Attention runs heads-first: with the head axis next to the batch axis, XLA:CPU
    keeps ``q k^T``, the softmax and ``A v`` as separate fast kernels; in the
    ``[B, L, H, D]`` layout it fused all three into one kernel 2-4x slower
    (docs/results/attention_fusion.json). The result is the same either way.
    """
    return jnp.swapaxes(x, 1, 2)


def attention_weights(q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """``softmax(q k^T / sqrt(d))``: ``q [B, H, Lq, D]``, ``k [B, H, Lk, D]`` -> ``[B, H, Lq, Lk]``.

    The logits and the softmax are float32 whatever the compute dtype: bf16 logits of
    magnitude 50 are 0.25 apart, which moves the weights by up to 12%.
    """
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    return jax.nn.softmax(logits / jnp.sqrt(q.shape[-1]).astype(jnp.float32), axis=-1).astype(q.dtype)


MAPS = "attention_maps"  # the variable collection holding cached attention maps


class MultiHeadAttention(nn.Module):
    """Self-attention over the tokens of ``x [B, L, C]`` -> ``[B, L, C]``; cross-attention
    to ``context [B, Lc, Dc]`` when one is given (keys and values from the context).

    The output projection is zero-initialised, so a fresh block is the identity
    inside its residual connection.

    ``attention`` (static, ``diffusion.contract.ATTENTION_MODES``) selects map reuse
    across sampling steps (Hunter et al.): ``"compute"``; ``"store"`` also writes the map
    ``[B, H, L, L]`` to the ``attention_maps`` collection; ``"reuse"`` reads it and
    computes only the values: ``out = A_cached v`` (no query/key projections, no
    ``q k^T``, no softmax). Cross-attention maps are never cached.

    ``qkv_bias=False``: projections without bias (Stable Diffusion's). ``zero_out=False``:
    the output projection keeps flax's default (lecun-normal) initialisation, for a block
    whose residual is gated by a zero-initialised gate of its own (a zero gate over a zero
    projection gives both zero gradient: the block would never train).
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    qkv_bias: bool = True
    zero_out: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, attention: str = "compute", context: jnp.ndarray | None = None) -> jnp.ndarray:
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {attention!r}; expected one of {ATTENTION_MODES}")
        if context is not None and attention != "compute":
            raise ValueError("cross-attention maps are not cached: use attention='compute' with a context")
        c = x.shape[-1]
        if c % self.num_heads:
            raise ValueError(f"attention width {c} is not divisible by num_heads={self.num_heads}")
        head = c // self.num_heads
        dense = lambda name: nn.DenseGeneral((self.num_heads, head), use_bias=self.qkv_bias, dtype=self.dtype,  # noqa: E731
                                             name=name)
        source = x if context is None else context.astype(x.dtype)
        v = heads_first(dense("value")(source))
        if attention == "reuse":
            weights = self.get_variable(MAPS, "weights")
            if weights is None:
                raise ValueError("attention='reuse' needs maps from an earlier attention='store' call "
                                 "(pass the attention_maps collection)")
        else:
            weights = attention_weights(heads_first(dense("query")(x)), heads_first(dense("key")(source)))
            if attention == "store":
                self.put_variable(MAPS, "weights", weights)
        out = heads_first(jnp.einsum("bhqk,bhkd->bhqd", weights, v))  # back to [B, Lq, H, D]
        out_init = nn.initializers.zeros_init() if self.zero_out else nn.linear.default_kernel_init
        return nn.DenseGeneral(c, axis=(-2, -1), kernel_init=out_init, dtype=self.dtype, name="out")(out)


class AttentionBlock(nn.Module):
    """Residual self-attention over ``H * W`` tokens: ``x: [B, H, W, C]`` -> ``[B, H, W, C]``."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, attention: str = "compute") -> jnp.ndarray:
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        normed = group_norm(c, "norm", self.dtype)(x).reshape(b, h * w, c)
        tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="self_attn")(normed, attention)
        return tokens.reshape(b, h, w, c)


TEMPORAL_CONDS = ("adaln_zero", "none")  # the temporal blocks' time conditioning (UNet.temporal_cond)


class TemporalAttentionBlock(nn.Module):
    """Residual self-attention across frames at each location (factorized space-time):
    ``x: [B * F, H, W, C]`` (frames folded into the batch, sample-major), ``emb: [B * F, D]``
    each frame's own time (and label) embedding, in the same order -> ``[B * F, H, W, C]``.

    Tokens are the ``F`` frames of one pixel; a parameter-free sinusoidal frame-position
    embedding is added to the attention's input, so attention knows frame order while no
    weight depends on ``F`` (the same weights run on 8 or 16 frames). Its maps
    ``[B * H * W, heads, F, F]`` are stored and reused like spatial ones (``attention``).

    ``time_cond`` (static):

    * ``"adaln_zero"`` (default): FVDM's per-frame adaLN-Zero, the attention half of its
      ``TransformerBlock_Temp`` (FVDM@9373f998 ``models/latte_video.py:278-310``; the
      per-frame conditioning ``timestep_temp`` at ``:488``): ``(shift, scale, gate) =
      Linear(SiLU(emb_f))`` per frame (the Linear zero-initialised, ``:432-434``), a
      LayerNorm without affine (eps 1e-6, ``:284``), then ``x + gate * attn(norm(x) * (1 +
      scale) + shift + position)`` (``:307``): every frame of every location is modulated
      and gated by its own time. The gate starts at 0, so a fresh block is the identity;
      the attention's output projection is *not* zeroed (the reference's is xavier,
      ``:400-405``), or gate and projection would both get zero gradient forever.
    * ``"none"``: the block before issue 26 (no time input; learned-affine LayerNorm; the
      output projection zero-initialised): video checkpoints trained before it load and run
      as they did.
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    time_cond: str = "adaln_zero"

    @nn.compact
    def __call__(self, x: jnp.ndarray, emb: jnp.ndarray, frames: int, attention: str = "compute") -> jnp.ndarray:
        from diffusion.nn.embeddings import sinusoidal_embedding

        if self.time_cond not in TEMPORAL_CONDS:
            raise ValueError(f"unknown temporal time conditioning {self.time_cond!r}; expected one of "
                             f"{', '.join(TEMPORAL_CONDS)} (config.model.temporal_cond)")
        bf, h, w, c = x.shape
        b = bf // frames
        tokens = x.reshape(b, frames, h * w, c).transpose(0, 2, 1, 3).reshape(b * h * w, frames, c)
        position = sinusoidal_embedding(jnp.arange(frames), c, scale=1.0).astype(self.dtype)
        if self.time_cond == "none":
            normed = nn.LayerNorm(dtype=self.dtype, name="norm")(tokens)
            tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="temporal_attn")(
                normed + position.astype(normed.dtype), attention)
        else:
            if emb is None or emb.shape[0] != bf:
                raise ValueError(f"the temporal block's adaLN needs one embedding per frame [B * F = {bf}, D]; "
                                 f"got {None if emb is None else emb.shape}")
            mod = nn.Dense(3 * c, kernel_init=nn.initializers.zeros_init(), dtype=self.dtype, name="ada")(
                nn.silu(emb))  # [B * F, 3C]: latte_video.py:290-293
            mod = jnp.broadcast_to(mod.reshape(b, 1, frames, 3 * c), (b, h * w, frames, 3 * c))
            shift, scale, gate = jnp.split(mod.reshape(b * h * w, frames, 3 * c), 3, axis=-1)  # the order of :304
            normed = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=self.dtype, name="norm")(tokens)
            y = MultiHeadAttention(self.num_heads, self.dtype, zero_out=False, name="temporal_attn")(
                normed * (1 + scale) + shift + position, attention)
            tokens = tokens + gate * y
        return tokens.reshape(b, h * w, frames, c).transpose(0, 2, 1, 3).reshape(bf, h, w, c)
