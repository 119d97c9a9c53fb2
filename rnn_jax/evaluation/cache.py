"""A continuous cache (Grave et al., 2017): the model's own window as a memory of what came next.

Patent abstracts repeat their own terms ("said neural network ... the neural network"). Each
earlier position i of a window has a hidden state h_i (the last recurrent layer's) and a word that
followed it, window[i + 1]. The cache's guess for the word after the window gives each of those
words the weight softmax_i(theta * h_last . h_i); it is mixed into the model's prediction:

  p(word) = (1 - weight) p_model(word) + weight p_cache(word)

Nothing is trained: theta and weight are chosen on validation, from THETAS x WEIGHTS, by loss.
The cache reads only the window the model reads, and no n-gram.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.model.word_rnn import WordRNN

THETAS = np.array([0.0, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5])  # flatness of the cache's weights
WEIGHTS = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.3])  # the cache's share of the mixture
BATCH = 512  # windows per step


def tune_and_score(model: WordRNN, params: Any,
                   dataset: data.Dataset) -> dict[str, Any]:
  """theta and weight with the lowest validation loss, and the mixture's figures there.

  Returns {'theta', 'weight', 'valid': {'loss', 'accuracy'}, 'test': {...} (if any)}.
  """
  if model.config.bidirectional:
    raise UserError('the cache reads hidden states position by position: a bidirectional '
                    'model has none that only saw the words before them')
  scores = {name: grid_scores(model, params, windows)
            for name, windows in (('valid', dataset.valid), ('test', dataset.test))
            if len(windows)}
  theta, weight = np.unravel_index(np.argmin(scores['valid']['loss']),
                                   scores['valid']['loss'].shape)
  return {'theta': float(THETAS[theta]), 'weight': float(WEIGHTS[weight])} | {
      name: {'loss': float(grid['loss'][theta, weight]),
             'accuracy': float(grid['accuracy'][theta, weight])}
      for name, grid in scores.items()}


def grid_scores(model: WordRNN, params: Any,
                windows: data.Windows) -> dict[str, np.ndarray]:
  """Mean loss and accuracy of the mixture at every (theta, weight): f64[THETAS, WEIGHTS]."""
  loss = np.zeros((len(THETAS), len(WEIGHTS)))
  correct = np.zeros_like(loss)
  for begin in range(0, len(windows), BATCH):
    features, labels = windows.take(np.arange(begin, min(begin + BATCH, len(windows))))
    batch_loss, batch_correct = jax.device_get(
        _sums(model, params, features, labels, THETAS, WEIGHTS))
    loss += batch_loss
    correct += batch_correct
  return {'loss': loss / len(windows), 'accuracy': correct / len(windows)}


@functools.partial(jax.jit, static_argnames='model')
def _sums(model, params, features, labels, thetas, weights):
  """Summed loss and correct guesses, each f32[thetas, weights], for features int32[b, t]."""
  hidden = _hidden_states(model, params, features)  # [b, t, units]
  model_probs = jax.nn.softmax(model.apply({'params': params}, hidden[:, -1], deterministic=True,
                                           method=WordRNN.head))
  similarity = jnp.einsum('bu,btu->bt', hidden[:, -1], hidden[:, :-1])
  followers = features[:, 1:]  # the word after each earlier position
  label_model = jnp.take_along_axis(model_probs, labels[:, None], axis=1)[:, 0]
  followers_model = jnp.take_along_axis(model_probs, followers, axis=1)
  top_model = jnp.max(model_probs, axis=1)
  same_word = (followers[:, :, None] == followers[:, None, :]).astype(similarity.dtype)

  def at_theta(theta):
    attention = jax.nn.softmax(theta * similarity, axis=1)
    label_cache = jnp.sum(attention * (followers == labels[:, None]), axis=1)
    followers_cache = jnp.einsum('bt,bst->bs', attention, same_word)

    def at_weight(weight):
      label = (1 - weight) * label_model + weight * label_cache
      # The mixture's top word is a cached word or the model's own top word.
      top = jnp.maximum(jnp.max((1 - weight) * followers_model + weight * followers_cache, 1),
                        (1 - weight) * top_model)
      return -jnp.sum(jnp.log(label)), jnp.sum(label >= top)

    return jax.vmap(at_weight)(weights)

  return jax.vmap(at_theta)(thetas)


def _hidden_states(model: WordRNN, params: Any, features: jax.Array) -> jax.Array:
  """f32[batch, time, units]: the last recurrent layer's h after each position of each window."""
  _, hidden = model.apply({'params': params}, features, deterministic=True, every_position=True,
                          method=WordRNN.encode)
  return jnp.swapaxes(hidden, 0, 1)
