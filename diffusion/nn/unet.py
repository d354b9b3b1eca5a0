"""ADM / DDPM++-style UNet in flax.linen.

The architecture is two static lists (:meth:`UNet.down_blocks`, :meth:`UNet.up_blocks`)
walked by ``__call__``: ``conv_in`` and every down block leave a skip, the middle
block, and up blocks that each consume one skip (last first). Submodule names are
explicit (``down_1_res_0``, ``mid_attn``, ``up_0_upsample``, ...) so checkpoint keys
stay stable when the code around them changes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.contract import COMPUTE, Modes
from diffusion.nn import remat
from diffusion.nn.deep_feature import hand_over
from diffusion.nn.attention import AttentionBlock, TemporalAttentionBlock
from diffusion.nn.blocks import Downsample, ResBlock, Upsample, conv3, group_norm
from diffusion.nn.embeddings import GuidanceEmbedding, TimeEmbedding
from diffusion.nn.split import EncoderFeatures, check_part


class UNet(nn.Module):
    """Class-conditional (or unconditional) UNet.

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
      guidance_embed: conditioned on a guidance scale ``guidance [B]`` (w-conditioned
        students of guided distillation; the embedding starts at zero).
      out_channels: output channels (defaults to the input's).
      temporal: a video UNet (docs/design/video.md): ``x [B, F, H, W, C]`` with per-frame
        times; frames are folded into the batch for the 2D blocks, each frame's features
        modulated by its own time embedding, and a temporal attention block
        (:class:`~diffusion.nn.attention.TemporalAttentionBlock`) follows every residual
        block. No parameter depends on ``F``.
      temporal_cond: the temporal blocks' per-frame time conditioning: ``"adaln_zero"``
        (FVDM's: each frame's tokens scaled, shifted and gated by its own embedding) or
        ``"none"`` (video models trained before issue 26).
      dtype: compute dtype (``bfloat16`` on accelerators); parameters stay float32.
      remat: the blocks' rematerialisation policy in training (``diffusion.nn.remat``).
    """

    channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (8,)
    num_heads: int = 4
    dropout: float = 0.0
    scale_shift: bool = True
    num_classes: int | None = None
    guidance_embed: bool = False
    out_channels: int | None = None
    temporal: bool = False
    temporal_cond: str = "adaln_zero"
    dtype: jnp.dtype = jnp.float32
    remat: str = "off"

    def down_blocks(self) -> list[tuple[str, int | None]]:
        """The encoder after ``conv_in``, in order: ``(name, width)`` of each residual
        block, ``(name, None)`` of each downsample. Each leaves one skip."""
        blocks = []
        for level, mult in enumerate(self.channel_mult):
            blocks += [(f"down_{level}_res_{i}", self.channels * mult) for i in range(self.num_res_blocks)]
            if level != len(self.channel_mult) - 1:
                blocks.append((f"down_{level}_downsample", None))
        return blocks

    def up_blocks(self) -> list[tuple[str, int, str | None]]:
        """The decoder, in order: ``(name, width, upsample name or None)`` of each residual
        block; block ``j`` consumes skip ``num_branches - 1 - j``."""
        blocks = []
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                upsample = f"up_{level}_upsample" if i == self.num_res_blocks and level != 0 else None
                blocks.append((f"up_{level}_res_{i}", self.channels * mult, upsample))
        return blocks

    @property
    def num_branches(self) -> int:
        """Skip branches (= up blocks): ``conv_in``, every down block and downsample."""
        return 1 + len(self.down_blocks())

    def encode(self, x: jnp.ndarray, t: jnp.ndarray, label: jnp.ndarray | None = None,
               guidance: jnp.ndarray | None = None, train: bool = False, modes: Modes = COMPUTE) -> EncoderFeatures:
        """TiUE's encoder (``conv_in``, down blocks, middle block) on ``x [B, H, W, C]`` at ``t [B]``."""
        return self(x, t, label, guidance, train, modes, part="encode")

    def decode(self, features: EncoderFeatures, t: jnp.ndarray, label: jnp.ndarray | None = None,
               guidance: jnp.ndarray | None = None, train: bool = False, modes: Modes = COMPUTE) -> jnp.ndarray:
        """TiUE's decoder (up blocks, output layers) on ``features`` with the time
        embedding of ``t [B]`` -> ``[B, H, W, out_channels]``; ``decode(encode(x, t), t)``
        is the full call."""
        return self(None, t, label, guidance, train, modes, part="decode", features=features)

    @nn.compact
    def __call__(self, x: jnp.ndarray | None, t: jnp.ndarray, label: jnp.ndarray | None = None,
                 guidance: jnp.ndarray | None = None, train: bool = False, modes: Modes = COMPUTE,
                 part: str = "all", features: EncoderFeatures | None = None) -> jnp.ndarray:
        """``x: [B, H, W, C]``, ``t: [B]`` or ``[]`` in ``[0, 1]``, ``label: [B]`` int,
        ``guidance: [B]`` -> ``[B, H, W, out_channels or C]`` in float32. A video UNet
        (``temporal``) takes ``x: [B, F, H, W, C]`` and ``t: [B, F]`` (or ``[B]`` / ``[]``,
        shared by the frames) -> ``[B, F, H, W, out_channels or C]``.

        ``modes`` (static; docs/design/caching.md): ``modes.attention`` applies to every
        self-attention map; ``modes.features`` to the deep feature entering the shallow
        decoder path of skip branch ``modes.feature_branch``: a ``"retrieve"`` call runs
        ``conv_in``, the down blocks of skips ``1..branch`` and the last ``branch + 1``
        up blocks on the cached feature.

        ``part`` (static; docs/design/tiue.md): ``"encode"`` returns the
        :class:`EncoderFeatures` after the middle block, ``"decode"`` runs the rest on
        ``features`` (``x`` unused).
        """
        check_part(part, modes, features, self.temporal)
        if part == "decode":
            if self.out_channels is None:
                raise ValueError("decode needs the UNet's out_channels set (the builder sets it)")
            frames, batch = None, features.batch
        else:
            video_shape = x.shape
            x, t, label, guidance, frames = self._fold_frames(x, t, label, guidance)
            self._check_input(x, modes)
            batch = x.shape[0]
        emb = self._embedding(t, label, guidance, batch)
        retrieve = modes.features == "retrieve"
        res_block = remat.block(ResBlock, self.remat, train, static_argnums=(3,))
        attention_block = remat.block(AttentionBlock, self.remat, train, static_argnums=(2,))
        temporal_block = remat.block(TemporalAttentionBlock, self.remat, train, static_argnums=(3, 4))

        def temporal(h, name):  # emb: [B * F, D], each frame's own embedding (sample-major, as h)
            if frames is None:
                return h
            return temporal_block(self.num_heads, self.dtype, self.temporal_cond, name=name)(
                h, emb, frames, modes.attention)

        def res_attn(h, width, name):  # a residual block, then attention at the chosen resolutions
            h = res_block(width, self.dropout, self.scale_shift, self.dtype, name=name)(h, emb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attention_block(self.num_heads, self.dtype, name=name.replace("_res_", "_attn_"))(h, modes.attention)
            return temporal(h, name.replace("_res_", "_temporal_"))

        if part == "decode":
            skips, h = list(features.skips), features.h
        else:
            h = conv3(self.channels, "conv_in", self.dtype)(x.astype(self.dtype))
            skips = [h]
            down = self.down_blocks()
            for name, width in (down[:modes.feature_branch] if retrieve else down):
                h = res_attn(h, width, name) if width else Downsample(self.dtype, name=name)(h)
                skips.append(h)

        if not retrieve and part != "decode":  # the middle block
            h = res_block(h.shape[-1], self.dropout, self.scale_shift, self.dtype, name="mid_res_0")(h, emb, train)
            h = attention_block(self.num_heads, self.dtype, name="mid_attn")(h, modes.attention)
            h = temporal(h, "mid_temporal")
            h = res_block(h.shape[-1], self.dropout, self.scale_shift, self.dtype, name="mid_res_1")(h, emb, train)
        if part == "encode":
            return EncoderFeatures(tuple(skips), h)

        first_shallow = self.num_branches - 1 - modes.feature_branch
        for j, (name, width, upsample) in enumerate(self.up_blocks()):
            if j < first_shallow and retrieve:
                continue
            if j == first_shallow:
                h = hand_over(self, h, modes.features)
            h = res_attn(jnp.concatenate([h, skips.pop()], axis=-1), width, name)
            if upsample:
                h = Upsample(self.dtype, name=upsample)(h)

        h = nn.silu(group_norm(h.shape[-1], "norm_out", self.dtype)(h))
        out = conv3(self.out_channels or x.shape[-1], "conv_out", self.dtype, zero=True)(h)
        if frames is not None:
            out = out.reshape(*video_shape[:2], *out.shape[1:])
        return out.astype(jnp.float32)

    def _fold_frames(self, x, t, label, guidance):
        """A video's frames folded into the batch: ``x [B * F, H, W, C]``, ``t [B * F]`` (a
        ``[B]`` or ``[]`` time shared by a sample's frames), label and guidance repeated per
        frame; ``frames`` is ``F`` (None for an image UNet, which gets its inputs back)."""
        if not self.temporal:
            if x.ndim != 4:
                raise ValueError(f"this UNet takes images [B, H, W, C]; got x of shape {x.shape} (a video needs "
                                 "config.model.temporal=True)")
            return x, t, label, guidance, None
        if x.ndim != 5:
            raise ValueError(f"a video UNet takes x [B, F, H, W, C]; got shape {x.shape}")
        b, frames = x.shape[:2]
        t = jnp.asarray(t)
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim > 2 or t.shape not in ((), (b, 1), (1, 1), (b, frames), (1, frames)):
            raise ValueError(f"a video UNet takes t of shape [], [B] or [B, F] = [{b}, {frames}]; got {t.shape}")
        t = jnp.broadcast_to(t, (b, frames)).reshape(b * frames)
        per_frame = lambda a: None if a is None else jnp.repeat(jnp.broadcast_to(a, (b,)), frames)  # noqa: E731
        return x.reshape(b * frames, *x.shape[2:]), t, per_frame(label), per_frame(guidance), frames

    def _check_input(self, x: jnp.ndarray, modes: Modes) -> None:
        if x.shape[1] % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"image size {x.shape[1]} is not divisible by 2^{len(self.channel_mult) - 1} "
                             f"(channel_mult={tuple(self.channel_mult)})")
        if not modes.feature_branch < self.num_branches:
            raise ValueError(f"feature_branch must be in [0, {self.num_branches - 1}] for this UNet, "
                             f"got {modes.feature_branch}")

    def _embedding(self, t, label, guidance, b: int) -> jnp.ndarray:
        """``[B, 4 channels]``: time, plus the class label and the guidance scale when used."""
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
        return emb
