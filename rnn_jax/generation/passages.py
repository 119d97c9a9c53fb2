"""Continuations of random held-out passages: what a run shows after each epoch and at its end."""

from collections.abc import Sequence
from typing import Any

from absl import logging
import jax
import numpy as np

from rnn_jax.configs import Config
from rnn_jax.corpus import data
from rnn_jax.corpus import seeds
from rnn_jax.corpus.text import Tokenizer
from rnn_jax.errors import UserError
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


def check(texts: Sequence[Sequence[int]], length: int):
  """Refuses, before a run trains, samples that no text of `texts` is long enough for."""
  if not any(len(text) >= length + seeds.MIN_ACTUAL_WORDS for text in texts):
    raise UserError(f'--samples_per_epoch: no validation text has the '
                    f'{length + seeds.MIN_ACTUAL_WORDS} tokens a sample passage needs; set it '
                    'to 0')


# Each epoch's samples: as long and as diverse as experiments.train's own at the end.
EPOCH_WORDS, EPOCH_TEMPERATURE = 30, 0.75


def after_epoch(config: Config, dataset: data.Dataset, params: Any) -> list[tuple[str, str]]:
  """The config's samples_per_epoch continuations of validation passages, logged. None in a
  run over several processes, whose parameters no one process holds whole."""
  if not config.train.samples_per_epoch or jax.process_count() > 1:
    return []
  samples = continue_random(WordRNN(config.model, dataset.tokenizer.vocab_size), params,
                            dataset.tokenizer, dataset.valid_texts, config.data.training_length,
                            config.train.samples_per_epoch, EPOCH_WORDS, EPOCH_TEMPERATURE,
                            config.seed)
  for seed, continuation in samples:
    logging.info('Sample: %s -> %s', seed, continuation)
  return samples
