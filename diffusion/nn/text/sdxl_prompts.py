"""Prompts -> the conditions of an SDXL UNet, as diffusers' ``StableDiffusionXLPipeline`` makes them.

Two frozen CLIP text encoders (``text_encoder``: OpenAI CLIP ViT-L; ``text_encoder_2``: OpenCLIP
bigG with ``text_projection``), each with its own tokenizer, padded to its ``model_max_length``:

* ``context [N, L, D1 + D2]``: both encoders' penultimate hidden states, *without* the final
  LayerNorm (the pipeline's ``hidden_states[-2]``), side by side;
* ``text_embeds [N, P]``: the second encoder's pooled output through its projection;
* ``time_ids [N, 6]``: original size, crop corner, target size (``(H, W, 0, 0, H, W)`` by default).

The negative branch (``null_*``): with ``force_zeros_for_empty_prompt`` (SDXL base's
``model_index.json``) and no negative prompt, zeros, as the pipeline does; otherwise the negative
prompt encoded the same way. Here an empty ``negative_prompt`` means "none" (diffusers' ``None``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from diffusion.nn.text.prompts import PromptEncoder


@dataclasses.dataclass(eq=False)
class SDXLPromptEncoder:
    """``first`` and ``second``: CLIP ``PromptEncoder`` s (the second with a projection); ``size``:
    ``(height, width)`` of the images, the default micro-conditioning."""

    first: PromptEncoder
    second: PromptEncoder
    force_zeros_for_empty_prompt: bool = True
    size: tuple[int, int] = (1024, 1024)

    def __post_init__(self):
        if self.first.kind != "clip_text" or self.second.kind != "clip_text" or not self.second.config.projection_dim:
            raise ValueError("SDXL needs two CLIP text encoders, the second with a text projection")
        self._apply = [jax.jit(lambda p, ids, e=e: e.module.apply({"params": p}, ids, raw_skip=1))
                       for e in (self.first, self.second)]

    @property
    def tokenizer(self):
        return self.first.tokenizer

    @property
    def max_length(self) -> int:
        return self.first.max_length

    def encode(self, prompts: Sequence[str], prompts_2: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(context [N, L, D1 + D2], pooled [N, P])`` float32; ``prompts_2`` go to the second encoder
        (default: ``prompts``), as the pipeline's ``prompt_2``."""
        states, pooled = [], None
        for encoder, apply, texts in zip((self.first, self.second), self._apply, (prompts, prompts_2 or prompts)):
            ids, _ = encoder.ids(list(texts))
            hidden, pooled = apply(encoder.params, ids)
            states.append(np.asarray(hidden, np.float32))
        return np.concatenate(states, axis=-1), np.asarray(pooled, np.float32)

    def conds(self, prompts: Sequence[str], negative_prompt: str = "", prompts_2: Sequence[str] | None = None,
              negative_prompt_2: str = "", original_size: tuple[int, int] | None = None,
              crop: tuple[int, int] = (0, 0), target_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """The UNet's conditions and guidance's nulls for ``prompts`` (``[N, ...]`` each); the ``_2``
        texts go to the second encoder (default: the first's), the sizes are ``(height, width)``."""
        if prompts_2 is not None and len(prompts_2) != len(prompts):
            raise ValueError(f"{len(prompts_2)} second prompts for {len(prompts)} prompts")
        context, pooled = self.encode(prompts, prompts_2)
        n = len(prompts)
        if not negative_prompt and self.force_zeros_for_empty_prompt:
            null_context, null_pooled = np.zeros_like(context), np.zeros_like(pooled)
        else:
            c, p = self.encode([negative_prompt], [negative_prompt_2 or negative_prompt])
            null_context, null_pooled = np.broadcast_to(c, context.shape).copy(), np.broadcast_to(p, pooled.shape).copy()
        ids = np.asarray([*(original_size or self.size), *crop, *(target_size or self.size)], np.float32)
        time_ids = np.broadcast_to(ids, (n, 6)).copy()
        return {"context": context, "null_context": null_context, "text_embeds": pooled, "null_text_embeds": null_pooled,
                "time_ids": time_ids}
