"""Texts in, token ids out: tokenizer, loading and splitting, pre-trained vectors, seeds."""
