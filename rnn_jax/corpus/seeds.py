"""Seeds for generation: the user's own text or random passages of the corpus, and display."""

import dataclasses
from collections.abc import Sequence

import numpy as np

from rnn_jax.corpus import text
from rnn_jax.errors import UserError

# The walkthrough starts a passage at most this many words before the end of its text.
MIN_ACTUAL_WORDS = 10


@dataclasses.dataclass(frozen=True)
class Seed:
  tokens: list[int]  # token ids the generator reads
  unknown: list[str]  # words of the user's text without an id of their own: left out
  actual: list[int] | None = None  # the corpus's real continuation, for random passages


def from_text(seed_text: str, tokenizer: text.Tokenizer) -> Seed:
  """Cleans and tokenizes the user's text as the training texts were."""
  cleaned = text.clean(seed_text, tokenizer.char_level)
  # Words the vocabulary lacks are left out, not read as the unknown word: what the user typed
  # is what the model reads, as generation never writes the unknown word either.
  tokens = [t for t in tokenizer.texts_to_sequences([cleaned])[0] if t != tokenizer.unknown_id]
  unknown = tokenizer.unknown_words(cleaned)
  if not tokens:
    detail = f' (not in the vocabulary: {", ".join(unknown)})' if unknown else ''
    raise UserError(f'the seed text {seed_text!r} leaves no word to start from{detail}')
  return Seed(tokens, unknown)


def random_passages(texts: Sequence[Sequence[int]], length: int, count: int, num_words: int,
                    rng: np.random.Generator) -> list[Seed]:
  """The walkthrough's random seed sequences, each with its real continuation.

  A random text, a random start in [0, len - length - 10], `length` words as the seed, and up to
  `num_words` words after them as `actual`.
  """
  eligible = [t for t in texts if len(t) >= length + MIN_ACTUAL_WORDS]
  if not eligible:
    raise UserError(f'no text has the {length + MIN_ACTUAL_WORDS} words a random passage needs')
  passages = []
  for index in rng.integers(len(eligible), size=count):
    tokens = list(eligible[index])
    start = int(rng.integers(len(tokens) - length - MIN_ACTUAL_WORDS + 1))
    passages.append(Seed(tokens[start:start + length], [],
                         tokens[start + length:start + length + num_words]))
  return passages


def pad(sequences: Sequence[Sequence[int]], length: int) -> np.ndarray:
  """int32[len(sequences), length]: the last `length` ids of each, left-padded with 0.

  Keras `pad_sequences` with padding and truncating 'pre', as the walkthrough fed its seeds.
  """
  padded = np.zeros((len(sequences), length), np.int32)
  for row, sequence in zip(padded, sequences):
    kept = list(sequence)[-length:]
    if kept:
      row[-len(kept):] = kept
  return padded


def show(tokenizer: text.Tokenizer, tokens: Sequence[int]) -> str:
  """Readable text: characters joined as they are, or words joined by spaces with punctuation
  glued back (the walkthrough's display clean-up). Every id shown as text goes through here."""
  tokens = tokenizer.tokens_of(tokens)
  return ''.join(tokens) if tokenizer.char_level else text.remove_spaces(' '.join(tokens))
