"""Frozen text encoders (Flax) and tokenizers read from a local folder."""
