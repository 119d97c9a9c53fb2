"""Continuations of random held-out passages: what a run shows after each epoch and at its end."""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from rnn_jax.corpus import seeds
from rnn_jax.corpus.text import Tokenizer
from rnn_jax.generation import sampling
from rnn_jax.model.word_rnn import WordRNN


def continue_random(model: WordRNN, params: Any, tokenizer: Tokenizer,
                    texts: Sequence[Sequence[int]], training_length: int, count: int,
                    num_words: int, temperature: float, seed: int) -> list[tuple[str, str]]:
  """(seed passage, generated continuation) for `count` random passages of `texts`.

  The passages and the key come from `seed` alone, so every epoch of a run continues the same
  passages with the same draws: what changes between them is the model.
  """
  passages = seeds.random_passages(texts, training_length, count, num_words,
                                   np.random.default_rng(seed))
  generated = sampling.continue_seeds(model, params, passages, training_length,
                                      jax.random.key(seed), num_words, temperature,
                                      sampling.Decoding(unknown_id=tokenizer.unknown_id))
  return [(seeds.show(tokenizer, passage.tokens), seeds.show(tokenizer, tokens))
          for passage, tokens in zip(passages, np.asarray(generated.tokens))]
