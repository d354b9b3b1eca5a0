"""Prompts -> the context a text-conditioned UNet attends to, with a frozen encoder.

``PromptEncoder(prompts) -> context [N, L, D]`` float32: tokens padded to ``max_length``
and truncated (as diffusers' StableDiffusionPipeline does), then

* CLIP (``kind="clip_text"``): the last hidden states through the final LayerNorm (or
  ``clip_skip`` layers earlier), every position, padding included, as SD was trained;
* BERT (``kind="bert"``): the last hidden states with padded positions set to zero (they
  would otherwise carry attention to nothing; zeros are deterministic and cheap).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.nn.text.bert import BertEncoder
from diffusion.nn.text.clip import CLIPTextEncoder
from diffusion.nn.text.tokenizer import tokenize


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(encoder: "PromptEncoder", params, ids, mask):
    return encoder.context(params, ids, mask)


@dataclasses.dataclass
class PromptEncoder:
    """A tokenizer and a frozen text encoder with its params.

    Attributes:
      kind: ``clip_text`` or ``bert``.
      tokenizer: a transformers tokenizer (``diffusion.nn.text.tokenizer.load_tokenizer``).
      config: the encoder's config dataclass.
      params: its parameters.
      max_length: tokens per prompt ``L``.
      clip_skip: CLIP only: take the hidden states this many layers before the last.
      batch_size: prompts per encoder call (one compiled shape).
    """

    kind: str
    tokenizer: Any
    config: Any
    params: Any
    max_length: int
    clip_skip: int = 0
    batch_size: int = 64

    def __post_init__(self):
        if self.kind not in ("clip_text", "bert"):
            raise ValueError(f"unknown text encoder kind {self.kind!r}; expected clip_text or bert")
        if self.kind == "bert" and self.clip_skip:
            raise ValueError("clip_skip applies to CLIP text encoders only")
        self.module = CLIPTextEncoder(self.config) if self.kind == "clip_text" else BertEncoder(self.config)

    @property
    def width(self) -> int:
        """``D``, the context's feature width (the UNet's ``cross_attention_dim``)."""
        return self.config.hidden_size

    def ids(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [N, L], mask [N, L])`` int32."""
        return tokenize(self.tokenizer, prompts, self.max_length)

    def context(self, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """``[N, L]`` token ids and mask -> context ``[N, L, D]`` with ``params`` (pure:
        usable inside a jitted training step with the params as an argument)."""
        if self.kind == "clip_text":
            return self.module.apply({"params": params}, ids, self.clip_skip)[0]
        hidden = self.module.apply({"params": params}, ids, mask)
        return hidden * mask[..., None].astype(hidden.dtype)

    def encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
        """:meth:`context` with the stored params, jitted."""
        return _encode(self, self.params, jnp.asarray(ids), jnp.asarray(mask))

    def __hash__(self) -> int:  # a static jit argument: the module and settings, never the params
        return hash((self.module, self.max_length, self.clip_skip))

    def __eq__(self, other) -> bool:
        return isinstance(other, PromptEncoder) and (self.module, self.max_length, self.clip_skip) == (
            other.module, other.max_length, other.clip_skip)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        ids, mask = self.ids(prompts)
        n, b = len(ids), self.batch_size
        out = []
        for start in range(0, n, b):
            chunk = slice(start, start + b)
            k = len(ids[chunk])
            pad = lambda a: np.resize(a[chunk], (b, a.shape[1]))  # noqa: E731 - one compiled shape
            out.append(np.asarray(self.encode_ids(pad(ids), pad(mask)))[:k])
        return np.concatenate(out) if out else np.zeros((0, self.max_length, self.width), np.float32)
