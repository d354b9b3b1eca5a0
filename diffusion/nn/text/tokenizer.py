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


def prompt_notices(tokenizer: Any, prompts: Sequence[str], max_length: int | None = None) -> list[str]:
    """What :func:`tokenize` loses of ``prompts``, one line per prompt and loss (each distinct
    prompt once): the tokens beyond ``max_length`` that are cut off (diffusers' pipeline warns
    of the same), and the words the tokenizer has no token for, in whole or in part: those
    parts become its unknown token (``<|endoftext|>`` for CLIP, ``[UNK]`` for BERT)."""
    length = max_length or tokenizer.model_max_length
    unk = tokenizer.unk_token_id
    notes = []
    for prompt in dict.fromkeys(prompts):
        shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        ids = tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
        if len(ids) > length:  # tokenize keeps the first length - 1 tokens and the end token
            cut = tokenizer.decode(ids[length - 1:-1], skip_special_tokens=True).strip()
            notes.append(f"prompt {shown!r} is {len(ids)} tokens and the text encoder takes {length}: the last "
                         f"{len(ids) - length} are cut off" + (f" ({cut!r})" if cut else ""))
        if unk is not None:
            lost = [w for w in dict.fromkeys(prompt.split())
                    if unk in tokenizer(w, add_special_tokens=False, verbose=False)["input_ids"]]
            if lost:
                notes.append(f"prompt {shown!r}: the tokenizer has no token for {', '.join(map(repr, lost))} "
                             f"(in whole or in part), which becomes {tokenizer.unk_token!r}")
    return notes
