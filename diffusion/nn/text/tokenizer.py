"""Tokenizers from a local folder only (transformers' own, never a hub name)."""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import numpy as np

TOKENIZER_FILES = ("tokenizer.json", "vocab.json + merges.txt (CLIP BPE)", "vocab.txt (WordPiece)")


def load_tokenizer(folder: str | pathlib.Path) -> Any:
    """The tokenizer saved in ``folder`` (e.g. a diffusers pipeline's ``tokenizer/``)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ValueError(f"tokenizer folder {folder} does not exist")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{folder} holds no tokenizer that transformers can read (expected one of "
                         f"{', '.join(TOKENIZER_FILES)}, with tokenizer_config.json): {str(e).splitlines()[0]}") from None


def tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [B, L] int32, mask [B, L] int32)``: padded to ``max_length`` (default the
    tokenizer's ``model_max_length``, 77 for CLIP) and truncated, as diffusers'
    StableDiffusionPipeline tokenizes prompts."""
    if isinstance(prompts, str):
        raise TypeError("tokenize takes a list of prompts, not one string")
    length = max_length or tokenizer.model_max_length
    if length > 4096:
        raise ValueError(f"the tokenizer's model_max_length is {length}: pass max_length")
    out = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="np")
    return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)
