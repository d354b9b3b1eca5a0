"""A CLIP-style BPE tokenizer trained offline for tests (no torch, no diffusers: cheap to import)."""


def train_clip_tokenizer(folder, corpus, vocab_size: int = 120, max_length: int = 16):
    """A BPE with ``</w>`` word ends trained on ``corpus`` with `tokenizers`, saved as vocab.json
    + merges.txt in ``folder`` and read back by transformers' CLIPTokenizer."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.model.save(str(folder))  # vocab.json, merges.txt
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                      model_max_length=max_length)
