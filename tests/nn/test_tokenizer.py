"""Tokenizers read from a local folder give transformers' own ids, padded and truncated
the way diffusers' StableDiffusionPipeline does; a folder without one is a clear error."""

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from diffusion.nn.text.tokenizer import load_tokenizer, tokenize  # noqa: E402

PROMPTS = ["", "a small 3 to the left of a thick 7", "hello, world!", "zebra quux " * 20, "a 1, a 4 and a 9"]


def clip_folder(tmp_path):
    words = ["a", "small", "to", "the", "left", "of", "thick", "hello", "world", "and", ",", "!"]
    chars = sorted(set("".join(words) + "0123456789qxzbuer"))
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
                                          + [w + "</w>" for w in words] + ["th", "the</w>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=12)
    tok.save_pretrained(tmp_path)
    return tok


def bert_folder(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "small", "3", "to", "the", "left", "of", "thick",
             "7", ",", "!", "hello", "world", "1", "4", "9", "and"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), model_max_length=10)
    tok.save_pretrained(tmp_path)
    return tok


@pytest.mark.parametrize("make", [clip_folder, bert_folder])
def test_ids_equal_transformers_pipeline_style(tmp_path, make):
    ref = make(tmp_path)
    ours = load_tokenizer(tmp_path)
    ids, mask = tokenize(ours, PROMPTS)
    expected = ref(PROMPTS, padding="max_length", max_length=ref.model_max_length, truncation=True)
    assert ids.dtype == np.int32 and ids.shape == (len(PROMPTS), ref.model_max_length)
    assert ids.tolist() == expected["input_ids"] and mask.tolist() == expected["attention_mask"]
    assert mask[3].all() and not mask[0].all()  # the long prompt is truncated, the empty one padded
    ids8, _ = tokenize(ours, PROMPTS, max_length=8)
    assert ids8.shape == (len(PROMPTS), 8)


def test_a_folder_without_a_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("make", [clip_folder, bert_folder])
def test_what_tokenizing_loses_is_said(tmp_path, make):
    """A prompt longer than the encoder takes is cut (as diffusers does, which warns too), and a
    word the tokenizer cannot encode becomes its unknown token: each is one notice, naming
    the prompt and what is lost; a prompt that loses nothing gets none."""
    from diffusion.nn.text.tokenizer import prompt_notices

    make(tmp_path)
    tok = load_tokenizer(tmp_path)
    long = "a small 3 to the left of a thick 7 and the 1 of a 4 and a 9"
    ids = tok(long)["input_ids"]
    assert len(ids) > 12
    notes = prompt_notices(tok, ["a small 3", long, "a 🐱 and a 9", long], max_length=12)
    cut = tok.decode(ids[11:-1], skip_special_tokens=True).strip()
    assert notes == [f"prompt {long[:37] + '...'!r} is {len(ids)} tokens and the text encoder takes 12: the last "
                     f"{len(ids) - 12} are cut off ({cut!r})",
                     f"prompt 'a 🐱 and a 9': the tokenizer has no token for '🐱' (in whole or in part), which "
                     f"becomes {tok.unk_token!r}"]
    assert tokenize(tok, [long], max_length=12)[0][0].tolist() == ids[:11] + ids[-1:]  # what is kept, as said
    assert prompt_notices(tok, ["a small 3", ""], max_length=12) == []
