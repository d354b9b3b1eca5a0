"""TiUE's encode/decode split shared by the UNets (docs/design/tiue.md): the encoder is
``conv_in``, the down blocks and the middle block; the decoder the up blocks and the output
layers. One compact ``__call__`` runs all, the encoder or the decoder (``part``), so the
halves share every parameter with the full call."""

from __future__ import annotations

import jax
from flax import struct

from diffusion.contract import COMPUTE, Modes

PARTS = ("all", "encode", "decode")


@struct.dataclass
class EncoderFeatures:
    """The encoder's output: ``skips`` (``conv_in`` and every down block's output, shallowest
    first, each ``[B, h, w, c]``) and ``h``, the middle block's output ``[B, h', w', c']``."""

    skips: tuple
    h: jax.Array

    @property
    def batch(self) -> int:
        return self.h.shape[0]


def check_part(part: str, modes: Modes, features, temporal: bool) -> None:
    """A split call is an image UNet's in ``COMPUTE`` mode; ``decode`` needs ``features``."""
    if part not in PARTS:
        raise ValueError(f"unknown UNet part {part!r}; expected one of {PARTS}")
    if part == "all":
        return
    if temporal:
        raise ValueError("the encode/decode split is for image UNets; this is a video UNet")
    if modes != COMPUTE:
        raise ValueError(f"a split UNet call ({part}) runs in COMPUTE mode only (no attention reuse or feature "
                         f"cache), got {modes}")
    if part == "decode" and not isinstance(features, EncoderFeatures):
        raise ValueError(f"decode needs the EncoderFeatures that encode returned, got {type(features).__name__}")
