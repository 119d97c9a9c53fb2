"""An interpolated Kneser-Ney n-gram model over token ids: a baseline for the recurrent models.

Chen & Goodman's interpolated Kneser-Ney with one absolute discount D at every level. The
highest order counts n-grams; each lower order counts, for an n-gram, the distinct tokens seen
before it (its continuation count); the lowest level interpolates the unigram with the uniform
distribution over the words 1..vocab_size-1, so every word keeps some probability. Id 0 is
padding: in a context it acts as a start-of-text token, and it is never a word to predict.

Contexts are stored as suffix tries flattened into sorted arrays: a context of k tokens has the
key `id(its last k-1 tokens) * vocab_size + its first token`, where ids index the sorted keys one
level down. Keys stay below num_events * vocab_size whatever the order, and `key // vocab_size`
is the id of the next shorter context, which is what continuation counts back off to.
"""

import dataclasses
from typing import NamedTuple

import numpy as np

from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.model import credit

ORDER = 4  # the baseline's order: it reads the last 3 words
DISCOUNT = 0.75  # the baseline's absolute discount


def events(sequences: list[list[int]] | list[np.ndarray],
           order: int) -> tuple[np.ndarray, np.ndarray]:
  """Every position of every sequence as an n-gram event.

  Returns:
    contexts: int32[n, order-1], the tokens before each position, left-padded with 0.
    labels: int32[n], the token at each position.
  """
  if order < 1:
    raise UserError(f'order must be >= 1, got {order}')
  lengths = np.array([len(s) for s in sequences], np.int64)
  if not lengths.sum():
    return np.zeros((0, order - 1), np.int32), np.zeros(0, np.int32)
  pad = np.zeros(order - 1, np.int32)
  tokens = np.concatenate([np.concatenate([pad, np.asarray(s, np.int32)]) for s in sequences])
  offsets = np.cumsum(lengths + order - 1) - lengths - order + 1
  first_event = np.cumsum(lengths) - lengths
  starts = np.repeat(offsets, lengths) + np.arange(lengths.sum()) - np.repeat(first_event, lengths)
  rows = np.lib.stride_tricks.sliding_window_view(tokens, order)[starts]
  return np.ascontiguousarray(rows[:, :-1]), rows[:, -1].copy()


class _Level(NamedTuple):
  """The contexts of one length k >= 1 and the discounted counts of the words after them."""
  keys: np.ndarray  # int64[num_contexts], sorted: id of the context's last k-1 tokens * V + first
  offsets: np.ndarray  # int64[num_contexts + 1]: context i's entries are offsets[i]:offsets[i+1]
  words: np.ndarray  # int32[num_entries]: the words seen after each context, sorted per context
  probs: np.ndarray  # f64[num_entries]: (count - D) / total count of the context
  backoff: np.ndarray  # f64[num_contexts]: D * distinct words after the context / total count


@dataclasses.dataclass(frozen=True)
class KneserNey:
  """A fitted model: p(word | the last order-1 tokens)."""
  vocab_size: int
  discount: float
  unigram: np.ndarray  # f32[vocab_size]: the level-0 distribution, 0 at id 0
  levels: tuple[_Level, ...]  # levels[k-1] holds the contexts of k tokens, k = 1..order-1

  @property
  def order(self) -> int:
    return len(self.levels) + 1

  @classmethod
  def fit(cls, contexts: np.ndarray, labels: np.ndarray, vocab_size: int,
          discount: float = 0.75) -> 'KneserNey':
    """Counts the training events.

    Args:
      contexts: int[n, order-1], from `events` or the last order-1 tokens of training windows;
        order = contexts.shape[1] + 1.
      labels: int[n], the word after each context, ids 1..vocab_size-1.
      vocab_size: ids run from 0 (padding) to vocab_size-1.
      discount: D, subtracted from every count, in (0, 1).
    """
    if vocab_size < 2:
      raise UserError(f'vocab_size must be >= 2 (id 0 is padding), got {vocab_size}')
    if not 0 < discount < 1:
      raise UserError(f'discount must be in (0, 1), got {discount}')
    contexts = _check_contexts(contexts, None, vocab_size)
    labels = _check_labels(labels, len(contexts), vocab_size)
    if not len(labels):
      raise UserError('no training events to fit')
    context_keys, context_ids = _context_keys(contexts, vocab_size)
    entries, counts = np.unique(context_ids * vocab_size + labels, return_counts=True)
    levels = []
    for keys in reversed(context_keys):
      levels.append(_level(keys, entries, counts, vocab_size, discount))
      # Entries are distinct n-grams: the ones that share their last n-1 tokens differ in the
      # token before, so counting them gives the continuation counts one level down.
      context, words = np.divmod(entries, vocab_size)
      entries, counts = np.unique(keys[context] // vocab_size * vocab_size + words,
                                  return_counts=True)
    return cls(vocab_size, discount, _unigram(entries, counts, vocab_size, discount),
               tuple(reversed(levels)))

  def log_probs(self, contexts: np.ndarray) -> np.ndarray:
    """f32[n, vocab_size]: log p(word | context) for contexts int[n, order-1]; column 0 is -inf."""
    probs = self._probs(_check_contexts(contexts, self.order - 1, self.vocab_size))
    with np.errstate(divide='ignore'):
      return np.log(probs, out=probs)

  def score(self, contexts: np.ndarray, labels: np.ndarray,
            batch_size: int = 1024) -> dict[str, float]:
    """Mean loss (-log p(label)) and next-word accuracy (`credit.top_k_credit`) over events.

    Args:
      contexts: int[n, order-1], e.g. the last order-1 tokens of each window.
      labels: int[n], the words that follow, ids 1..vocab_size-1.
      batch_size: contexts per dense f32[batch_size, vocab_size] distribution.
    """
    contexts = _check_contexts(contexts, self.order - 1, self.vocab_size)
    labels = _check_labels(labels, len(contexts), self.vocab_size)
    if not len(labels):
      raise UserError('no events to score')
    if batch_size < 1:
      raise UserError(f'batch_size must be >= 1, got {batch_size}')
    loss, correct = 0.0, 0.0
    for start in range(0, len(labels), batch_size):
      probs = self._probs(contexts[start:start + batch_size])
      chunk = labels[start:start + batch_size]
      # The probabilities rank the words as log_probs do: only the labels need a log.
      loss -= np.log(probs[np.arange(len(chunk)), chunk]).sum(dtype=np.float64)
      correct += np.asarray(credit.top_k_credit(probs, chunk, 1)).sum(dtype=np.float64)
    return {'loss': float(loss / len(labels)), 'accuracy': float(correct / len(labels)),
            'num_windows': len(labels)}

  def _probs(self, contexts: np.ndarray) -> np.ndarray:
    """f32[n, vocab_size]: p(word | context) for contexts int64[n, order-1]."""
    # Unrolled, p_k = sparse_k + backoff_k * p_(k-1): each level's sparse terms are weighted by
    # the backoffs of the levels above it, so the dense matrix is written once, for the unigram.
    above = np.ones(len(contexts))
    weighted = []
    for level, ids in reversed(list(zip(self.levels, self._context_ids(contexts)))):
      weighted.append((level, ids, above))
      # Unseen contexts (id -1, which reads some other backoff, then masked) pass p_(k-1) on.
      above = above * np.where(ids >= 0, level.backoff[ids], 1.0)
    probs = above.astype(np.float32)[:, None] * self.unigram
    for level, ids, weight in weighted:
      _add_level(probs, level, ids, weight)
    return probs

  def _context_ids(self, contexts: np.ndarray) -> list[np.ndarray]:
    """Per level k = 1..order-1, int64[n]: each row's last k tokens as a context id, -1 unseen."""
    ids = np.zeros(len(contexts), np.int64)
    per_level = []
    for k, level in enumerate(self.levels, 1):
      keys = ids * self.vocab_size + contexts[:, -k]
      found = np.minimum(np.searchsorted(level.keys, keys), len(level.keys) - 1)
      ids = np.where((ids >= 0) & (level.keys[found] == keys), found, -1)
      per_level.append(ids)
    return per_level


def _check_contexts(contexts: np.ndarray, width: int | None, vocab_size: int) -> np.ndarray:
  contexts = np.asarray(contexts)
  if contexts.ndim != 2 or (width is not None and contexts.shape[1] != width):
    expected = 'order-1' if width is None else width
    raise UserError(f'contexts must be int[n, {expected}], got shape {contexts.shape}')
  return _check_ids('context', contexts, 0, vocab_size)


def _check_labels(labels: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise UserError(f'labels must be int[{n}], one per context, got shape {labels.shape}')
  return _check_ids('label', labels, 1, vocab_size)


def _check_ids(name: str, ids: np.ndarray, low: int, vocab_size: int) -> np.ndarray:
  """ids as int64, once they are integers in [low, vocab_size)."""
  if ids.size and not np.issubdtype(ids.dtype, np.integer):
    raise UserError(f'{name} ids must be integers, got {ids.dtype}')
  if ids.size and (ids.min() < low or ids.max() >= vocab_size):
    raise UserError(f'{name} ids must be in [{low}, {vocab_size}), got ids from {ids.min()} '
                    f'to {ids.max()}')
  return ids.astype(np.int64)


def _context_keys(contexts: np.ndarray, vocab_size: int) -> tuple[list[np.ndarray], np.ndarray]:
  """The sorted keys of the contexts of each length 1..order-1, and each row's full-context id."""
  ids = np.zeros(len(contexts), np.int64)
  keys = []
  for k in range(1, contexts.shape[1] + 1):
    level_keys, ids = np.unique(ids * vocab_size + contexts[:, -k], return_inverse=True)
    keys.append(level_keys)
  return keys, ids


def _level(keys: np.ndarray, entries: np.ndarray, counts: np.ndarray, vocab_size: int,
           discount: float) -> _Level:
  """One level's tables from its sorted n-gram entries (context id * V + word) and counts."""
  context, words = np.divmod(entries, vocab_size)
  total = np.bincount(context, weights=counts, minlength=len(keys))
  distinct = np.bincount(context, minlength=len(keys))
  offsets = np.concatenate([[0], np.cumsum(distinct)])
  return _Level(keys, offsets, words.astype(np.int32), (counts - discount) / total[context],
                discount * distinct / total)


def _unigram(words: np.ndarray, counts: np.ndarray, vocab_size: int,
             discount: float) -> np.ndarray:
  """f32[vocab_size]: the discounted unigram, interpolated with uniform over ids 1..V-1."""
  total = counts.sum()
  probs = np.full(vocab_size, discount * len(words) / total / (vocab_size - 1))
  probs[words] += (counts - discount) / total
  probs[0] = 0
  return probs.astype(np.float32)


def _add_level(probs: np.ndarray, level: _Level, ids: np.ndarray, weight: np.ndarray):
  """Adds weight * the level's discounted terms to the rows of probs whose context it holds."""
  rows = np.flatnonzero(ids >= 0)
  starts = level.offsets[ids[rows]]
  lengths = level.offsets[ids[rows] + 1] - starts
  row = np.repeat(rows, lengths)
  entry = np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
  # A context holds each word once, so the flat indices are distinct and `+=` misses nothing.
  probs.reshape(-1)[row * probs.shape[1] + level.words[entry]] += weight[row] * level.probs[entry]


def baseline(dataset: data.Dataset, windows: data.Windows, order: int = ORDER) -> dict[str, float]:
  """A Kneser-Ney model of the training data, scored on the last order-1 tokens of `windows`."""
  check_order(order, windows.length)
  scores = fit_baseline(dataset, order).score(*window_contexts(windows, order))
  return {'kneser_ney_loss': scores['loss'], 'kneser_ney_accuracy': scores['accuracy']}


def fit_baseline(dataset: data.Dataset, order: int = ORDER) -> KneserNey:
  """The baseline fitted to every position of the training texts or, for runs split by windows
  (no training texts), to the last order-1 tokens and the label of each training window."""
  if dataset.train_texts is None:
    contexts, labels = window_contexts(dataset.train, order)
  else:
    contexts, labels = events(dataset.train_texts, order)
  return KneserNey.fit(contexts, labels, dataset.tokenizer.vocab_size, DISCOUNT)


def check_order(order: int, window_length: int):
  if order < 1:
    raise UserError(f'ngram_order must be >= 1, got {order}')
  if order - 1 > window_length:
    raise UserError(f'a {order}-gram model reads {order - 1} tokens, but the windows hold '
                    f'{window_length}; use an ngram_order <= {window_length + 1}')


def window_contexts(windows: data.Windows, order: int) -> tuple[np.ndarray, np.ndarray]:
  """(contexts: int32[n, order-1], labels: int32[n]): what an n-gram reads of each window."""
  width = order - 1
  # The same windows, cut to their last tokens: they still end where their labels begin.
  cut = data.Windows(windows.tokens, windows.starts + windows.length - width, width)
  return cut.take(np.arange(len(cut)))
