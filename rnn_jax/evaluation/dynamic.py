"""Dynamic evaluation (Krause et al., 2018): the model keeps learning from the held-out text as
it scores it.

The windows are scored in the text's order, `BLOCK` at a time. Each block is scored with the
weights as they are, then the weights take one SGD step on that block's log loss, and move
`decay` of the way back toward the trained weights (Krause's pull toward the prior):

  w <- w - lr * grad(block loss at w) + decay * (w_trained - w)

So every step learns only from words already scored, each word is scored exactly once, by
exactly the window static evaluation scores it with, and the figures compare with static ones
window for window. lr and decay are chosen on validation from LRS x DECAYS; (0, 0) is static
evaluation.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax.corpus import data
from rnn_jax.model.word_rnn import WordRNN
from rnn_jax.training import metrics

LRS = (0.0, 0.03, 0.1, 0.3, 1.0)  # SGD step sizes tried on validation (0.3 won the first grid)
DECAYS = (0.0, 0.02)  # pulls back toward the trained weights, tried on validation
BLOCK = 32  # windows scored between two steps


def tune_and_score(model: WordRNN, params: Any, dataset: data.Dataset) -> dict[str, Any]:
  """lr and decay with the lowest validation loss, and the figures there on validation and
  (where the run has one) test: {'lr', 'decay', 'valid': {loss, accuracy, top5_accuracy}, ...}."""
  grid = [(lr, decay) for lr in LRS for decay in (DECAYS if lr else (0.0,))]
  valid = [score(model, params, dataset.valid, lr, decay) for lr, decay in grid]
  best = int(np.argmin([v['loss'] for v in valid]))
  lr, decay = grid[best]
  results = {'lr': lr, 'decay': decay, 'valid': valid[best]}
  if len(dataset.test):
    results['test'] = score(model, params, dataset.test, lr, decay)
  return results


def score(model: WordRNN, params: Any, windows: data.Windows, lr: float,
          decay: float) -> dict[str, float]:
  """Mean loss, accuracy and top-5 accuracy of `windows`, scored in order while adapting."""
  # A copy: each step donates the weights it adapts, and the trained ones must stay.
  adapted, totals = jax.tree.map(jnp.copy, params), None
  for features, labels, weights in data.batches(windows, BLOCK):
    adapted, sums = _score_then_learn(model, adapted, params, features, labels, weights,
                                      jnp.float32(lr), jnp.float32(decay))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  means = metrics.summarize(jax.device_get(totals))
  return {name: means[name] for name in ('loss', 'accuracy', 'top5_accuracy')}


@functools.partial(jax.jit, static_argnames='model', donate_argnums=1)
def _score_then_learn(model, adapted, trained, features, labels, weights, lr, decay):
  """One block: its metric sums at the current weights, and the weights after its step."""

  def loss_fn(params):
    logits = model.apply({'params': params}, features, deterministic=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1), (logits, losses)

  (_, (logits, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(adapted)
  sums = metrics.batch_metrics(logits, labels, weights, losses)
  stepped = jax.tree.map(lambda w, g, w0: w - lr * g + decay * (w0 - w), adapted, grads, trained)
  return stepped, sums
