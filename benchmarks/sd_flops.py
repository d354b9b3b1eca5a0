"""Closed-form FLOP counts of an SD-family UNet call, by resolution and by kind.

Counts multiply-adds of the layers that dominate (2 FLOPs each): convolutions (3x3 and
1x1, including resnet shortcuts, down- and upsamplers), self-attention (q, k, v, out
projections plus ``q k^T`` and ``A v``), cross-attention (q and out projections on the
image tokens, k and v on the text tokens, ``q k^T`` and ``A v``), and the rest of each
transformer block (GEGLU feed-forward, proj_in / proj_out). Norms, activations, the
softmax and the time embedding are left out (a few percent); ``benchmarks.sd_unet_speed``
compares the total with XLA's own count.
"""

from __future__ import annotations

import collections
from typing import Sequence


def _heads(value, level: int) -> int:
    return value[level] if isinstance(value, (list, tuple)) else value


def unet_flops(block_out_channels: Sequence[int], down_block_types: Sequence[str], layers_per_block: int,
               in_channels: int, out_channels: int, size: int, context_len: int, context_dim: int,
               batch: int = 1) -> dict[str, dict[str, float]]:
    """``{resolution: {"conv", "self_attention", "cross_attention", "transformer_other"}}``
    FLOPs of one call on ``[batch, size, size, in_channels]`` latents and a
    ``[batch, context_len, context_dim]`` context."""
    out: dict = collections.defaultdict(lambda: collections.defaultdict(float))

    def add(res: int, kind: str, macs: float) -> None:
        out[res][kind] += 2.0 * batch * macs

    def conv(res, cin, cout, k=3):
        add(res, "conv", res * res * k * k * cin * cout)

    def resnet(res, cin, cout):
        conv(res, cin, cout)
        conv(res, cout, cout)
        if cin != cout:
            conv(res, cin, cout, 1)

    def transformer(res, c):
        tokens = res * res
        add(res, "self_attention", 4 * tokens * c * c + 2 * tokens * tokens * c)
        add(res, "cross_attention", 2 * tokens * c * c + 2 * context_len * context_dim * c
            + 2 * tokens * context_len * c)
        add(res, "transformer_other", tokens * c * 8 * c + tokens * 4 * c * c + 2 * tokens * c * c)

    res, ch = size, block_out_channels[0]
    conv(res, in_channels, ch)
    skips = [ch]
    levels = len(block_out_channels)
    for level, (width, kind) in enumerate(zip(block_out_channels, down_block_types)):
        for _ in range(layers_per_block):
            resnet(res, ch, width)
            ch = width
            if kind.startswith("CrossAttn"):
                transformer(res, ch)
            skips.append(ch)
        if level != levels - 1:
            conv(res // 2, ch, ch)
            res //= 2
            skips.append(ch)
    resnet(res, ch, ch)
    transformer(res, ch)
    resnet(res, ch, ch)
    for level, (width, kind) in enumerate(zip(reversed(block_out_channels), reversed(down_block_types))):
        for _ in range(layers_per_block + 1):
            resnet(res, ch + skips.pop(), width)
            ch = width
            if kind.startswith("CrossAttn"):
                transformer(res, ch)
        if level != levels - 1:
            res *= 2
            conv(res, ch, ch)
    conv(res, ch, out_channels)
    return {r: dict(v) for r, v in out.items()}
