"""A continuous cache (Grave et al., 2017): the model's own window as a memory of what came next.

Patent abstracts repeat their own terms ("said neural network ... the neural network"). Each
earlier position i of a window has a hidden state h_i (the last recurrent layer's) and a word that
followed it, window[i + 1]. The cache's guess for the word after the window gives each of those
words the weight softmax_i(theta * h_last . h_i); it is mixed into the model's prediction:

  p(word) = (1 - weight) p_model(word) + weight p_cache(word)

Nothing is trained: theta and weight are chosen on validation, from THETAS x WEIGHTS, by loss.
The cache reads only the window the model reads, and no n-gram.

For a fair comparison the Kneser-Ney baseline gets the same cache over the same windows. It has no
hidden states, so its cache is the one at theta = 0, where every earlier position weighs the same:
p_cache(word) is the share of the window's followers that are `word`. Only its weight is chosen.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.model import ngram
from rnn_jax.model.word_rnn import WordRNN
from rnn_jax.training import metrics

THETAS = np.array([0.0, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5])  # flatness of the cache's weights
WEIGHTS = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.3])  # the cache's share of the mixture
BATCH = 512  # windows per step: a few f32[BATCH, vocab] distributions at a time

Scores = dict[str, np.ndarray]  # mean 'loss' and 'accuracy' over windows at each grid point


def tune_and_score(model: WordRNN, params: Any,
                   dataset: data.Dataset) -> dict[str, Any]:
  """theta and weight with the lowest validation loss, and the mixture's figures there.

  Returns {'theta', 'weight', 'valid': {'loss', 'accuracy'}, 'test': {...} (if any)}.
  """
  if model.config.bidirectional:
    raise UserError('the cache reads hidden states position by position: a bidirectional '
                    'model has none that only saw the words before them')
  (theta, weight), figures = _tuned(dataset, functools.partial(grid_scores, model, params))
  return {'theta': float(THETAS[theta]), 'weight': float(WEIGHTS[weight])} | figures


def ngram_tune_and_score(dataset: data.Dataset, order: int = ngram.ORDER) -> dict[str, Any]:
  """The Kneser-Ney baseline with the cache at theta = 0, its weight chosen on validation.

  Returns {'weight', 'valid': {'loss', 'accuracy'}, 'test': {...} (if any)}.
  """
  ngram.check_order(order, dataset.valid.length)
  kneser_ney = ngram.fit_baseline(dataset, order)
  (weight,), figures = _tuned(dataset, functools.partial(ngram_grid_scores, kneser_ney))
  return {'weight': float(WEIGHTS[weight])} | figures


def grid_scores(model: WordRNN, params: Any, windows: data.Windows) -> Scores:
  """Mean loss and accuracy of the mixture at every (theta, weight): f64[THETAS, WEIGHTS]."""
  return _mean_over(windows, lambda indices: _sums(model, params, *windows.take(indices), THETAS,
                                                   WEIGHTS))


def ngram_grid_scores(kneser_ney: ngram.KneserNey, windows: data.Windows) -> Scores:
  """Mean loss and accuracy of the n-gram mixed with its cache at each weight: f64[WEIGHTS]."""
  contexts, _ = ngram.window_contexts(windows, kneser_ney.order)
  return _mean_over(windows, lambda indices: _ngram_sums(
      *windows.take(indices), np.exp(kneser_ney.log_probs(contexts[indices])), WEIGHTS))


def cache_probs(attention: jax.Array, features: jax.Array, vocab_size: int) -> jax.Array:
  """p_cache: f32[batch, vocab_size], each word given the attention f32[batch, time-1] paid to
  the earlier positions of its window that it followed (features: int32[batch, time])."""
  rows = jnp.arange(len(features))[:, None]
  return jnp.zeros((len(features), vocab_size), attention.dtype).at[rows, features[:, 1:]].add(
      attention)


def _tuned(dataset: data.Dataset,
           scores_of: Callable[[data.Windows], Scores]) -> tuple[tuple[int, ...], dict[str, Any]]:
  """The grid point with the lowest validation loss, and each split's figures there."""
  scores = {name: scores_of(windows)
            for name, windows in (('valid', dataset.valid), ('test', dataset.test))
            if len(windows)}
  best = np.unravel_index(np.argmin(scores['valid']['loss']), scores['valid']['loss'].shape)
  return best, {name: {'loss': float(grid['loss'][best]),
                       'accuracy': float(grid['accuracy'][best])}
                for name, grid in scores.items()}


def _mean_over(windows: data.Windows,
               batch_sums: Callable[[np.ndarray], tuple[jax.Array, jax.Array]]) -> Scores:
  """Means over the windows of batch_sums(indices): the loss and credit at each grid point,
  summed over the windows at `indices`, BATCH of them at a time."""
  loss = correct = np.float64(0)
  for begin in range(0, len(windows), BATCH):
    indices = np.arange(begin, min(begin + BATCH, len(windows)))
    batch_loss, batch_correct = jax.device_get(batch_sums(indices))
    loss, correct = loss + batch_loss, correct + batch_correct
  return {'loss': loss / len(windows), 'accuracy': correct / len(windows)}


@functools.partial(jax.jit, static_argnames='model')
def _sums(model, params, features, labels, thetas, weights):
  """Summed loss and top-1 credit, each f32[thetas, weights], for features int32[b, t]."""
  hidden = _hidden_states(model, params, features)  # [b, t, units]
  model_probs = jax.nn.softmax(model.apply({'params': params}, hidden[:, -1], deterministic=True,
                                           method=WordRNN.head))
  similarity = jnp.einsum('bu,btu->bt', hidden[:, -1], hidden[:, :-1])

  def at_theta(theta):
    attention = jax.nn.softmax(theta * similarity, axis=1)
    return metrics.mixture_sums(model_probs, cache_probs(attention, features, model.vocab_size),
                                labels, weights)

  return jax.lax.map(at_theta, thetas)


@jax.jit
def _ngram_sums(features, labels, ngram_probs, weights):
  """Summed loss and top-1 credit, each f32[weights], for ngram_probs f32[b, vocab]."""
  uniform = jax.nn.softmax(jnp.zeros(features[:, 1:].shape), axis=1)  # theta = 0
  return metrics.mixture_sums(ngram_probs, cache_probs(uniform, features, ngram_probs.shape[1]),
                              labels, weights)


def _hidden_states(model: WordRNN, params: Any, features: jax.Array) -> jax.Array:
  """f32[batch, time, units]: the last recurrent layer's h after each position of each window."""
  _, hidden = model.apply({'params': params}, features, deterministic=True, every_position=True,
                          method=WordRNN.encode)
  return jnp.swapaxes(hidden, 0, 1)
