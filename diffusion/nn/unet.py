"""ADM / DDPM++-style UNet in flax.linen.

Submodule names are explicit (``down_1_res_0``, ``mid_attn``, ``up_0_upsample``, ...) so
checkpoint keys stay stable when the code around them changes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.nn.attention import AttentionBlock
from diffusion.nn.blocks import Downsample, ResBlock, Upsample, conv3, group_norm
from diffusion.nn.embeddings import GuidanceEmbedding, TimeEmbedding

FEATURE_MODES = ("compute", "store", "retrieve")
FEATURES = "deep_features"  # the variable collection holding the cached decoder input


class UNet(nn.Module):
    """Class- and/or text-conditional UNet.

    Attributes:
      channels: base width; level ``i`` has ``channels * channel_mult[i]``.
      channel_mult: one entry per resolution level (each but the last halves H, W).
      num_res_blocks: residual blocks per level on the way down (``+1`` on the way up).
      attn_resolutions: spatial sizes (``H``) at which blocks get self-attention.
      num_heads: attention heads.
      dropout: dropout rate inside residual blocks (active when ``train=True``).
      scale_shift: FiLM conditioning in residual blocks (ADM); False is DDPM's additive one.
      num_classes: class-conditional when set; label ``num_classes`` is the null
        (unconditional) label used by classifier-free guidance.
      context_dim: when set, attention blocks cross-attend to ``context [B, L, context_dim]``.
      guidance_embed: conditioned on a guidance scale ``guidance [B]`` (w-conditioned
        students of guided distillation; the embedding starts at zero).
      out_channels: output channels (defaults to the input's).
      dtype: compute dtype (``bfloat16`` on accelerators); parameters stay float32.
    """

    channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (8,)
    num_heads: int = 4
    dropout: float = 0.0
    scale_shift: bool = True
    num_classes: int | None = None
    context_dim: int | None = None
    guidance_embed: bool = False
    out_channels: int | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        t: jnp.ndarray,
        label: jnp.ndarray | None = None,
        context: jnp.ndarray | None = None,
        guidance: jnp.ndarray | None = None,
        train: bool = False,
        attention: str = "compute",
        features: str = "compute",
        feature_branch: int = 0,
    ) -> jnp.ndarray:
        """``x: [B, H, W, C]``, ``t: [B]`` or ``[]`` in ``[0, 1]``, ``label: [B]`` int,
        ``context: [B, L, D]``, ``guidance: [B]`` -> ``[B, H, W, out_channels or C]`` in float32.

        Caching across sampling steps (static arguments; docs/design/caching.md):
        ``attention`` (``"compute" | "store" | "reuse"``) for every self-attention map;
        ``features`` (``"compute" | "store" | "retrieve"``) for the deep feature entering
        the shallow decoder path of skip branch ``feature_branch`` (0 = shallowest:
        only ``conv_in`` and the last up block run on a retrieve step).
        """
        if features not in FEATURE_MODES:
            raise ValueError(f"unknown features mode {features!r}; expected one of {FEATURE_MODES}")
        b, height, width, in_ch = x.shape
        if height % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"image size {height} is not divisible by 2^{len(self.channel_mult) - 1} "
                             f"(channel_mult={tuple(self.channel_mult)})")
        num_skips = self.num_branches
        if not 0 <= feature_branch < num_skips:
            raise ValueError(f"feature_branch must be in [0, {num_skips - 1}] for this UNet, got {feature_branch}")
        emb_dim = 4 * self.channels
        emb = TimeEmbedding(self.channels, emb_dim, self.dtype, name="time_embed")(jnp.broadcast_to(t, (b,)))
        if self.num_classes is not None:
            if label is None:
                raise ValueError("class-conditional UNet needs cond['label'] of shape [B] "
                                 f"(use {self.num_classes} for unconditional)")
            emb = emb + nn.Embed(self.num_classes + 1, emb_dim, name="label_embed")(label).astype(self.dtype)
        if self.guidance_embed:
            if guidance is None:
                raise ValueError("this UNet is a guidance-conditioned student: pass cond['guidance'] of shape [B] "
                                 "(the guidance scale w; 1 is the plain conditional model)")
            w = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (b,))
            emb = emb + GuidanceEmbedding(self.channels, emb_dim, self.dtype, name="guidance_embed")(w)
        use_ctx = self.context_dim is not None
        retrieve = features == "retrieve"

        def res(h, ch, name):
            return ResBlock(ch, self.dropout, self.scale_shift, self.dtype, name=name)(h, emb, train)

        def attn(h, name):
            return AttentionBlock(self.num_heads, use_ctx, self.dtype, name=name)(h, context, attention)

        def shallow_enough(skips):  # a retrieve step needs skips 0..feature_branch only
            return retrieve and len(skips) > feature_branch

        h = conv3(self.channels, "conv_in", self.dtype)(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                if shallow_enough(skips):
                    break
                h = res(h, self.channels * mult, f"down_{level}_res_{i}")
                if h.shape[1] in self.attn_resolutions:
                    h = attn(h, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != len(self.channel_mult) - 1 and not shallow_enough(skips):
                h = Downsample(self.dtype, name=f"down_{level}_downsample")(h)
                skips.append(h)

        if not retrieve:
            h = res(h, h.shape[-1], "mid_res_0")
            h = attn(h, "mid_attn")
            h = res(h, h.shape[-1], "mid_res_1")

        first_shallow = num_skips - 1 - feature_branch  # index of the first shallow up block
        j = 0
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                if j == first_shallow:
                    if retrieve:
                        h = self.get_variable(FEATURES, "h")
                        if h is None:
                            raise ValueError("features='retrieve' needs a feature from an earlier "
                                             "features='store' call (pass the deep_features collection)")
                    elif features == "store":
                        self.put_variable(FEATURES, "h", h)
                if j >= first_shallow or not retrieve:
                    h = res(jnp.concatenate([h, skips[num_skips - 1 - j]], axis=-1), self.channels * mult,
                            f"up_{level}_res_{i}")
                    if h.shape[1] in self.attn_resolutions:
                        h = attn(h, f"up_{level}_attn_{i}")
                j += 1
            if level != 0 and (j > first_shallow or not retrieve):
                h = Upsample(self.dtype, name=f"up_{level}_upsample")(h)

        h = nn.silu(group_norm(h.shape[-1], "norm_out", self.dtype)(h))
        out = conv3(self.out_channels or in_ch, "conv_out", self.dtype, zero=True)(h)
        return out.astype(jnp.float32)

    @property
    def num_branches(self) -> int:
        """Skip branches (= up blocks): ``conv_in``, every down block and downsample."""
        levels = len(self.channel_mult)
        return 1 + levels * self.num_res_blocks + (levels - 1)
