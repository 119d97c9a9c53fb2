"""How predictions are scored: summed batch metrics, evaluation over windows, naive baselines.

Training logs these, `experiments.evaluate` reports them: one copy of each figure.
"""

import json
import math
from pathlib import Path
from typing import Any

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax.configs import Config
from rnn_jax.corpus import data
from rnn_jax.model import credit
from rnn_jax.model import ngram
from rnn_jax.training import checkpoints
from rnn_jax.training import optimizer
from rnn_jax.training.parallel import Parallel

Metrics = dict[str, jax.Array]  # sums over windows, plus their 'count'
COUNTS = ('count', 'skipped')  # windows counted and batches skipped: not sums over windows


def batch_metrics(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                  losses: jax.Array) -> Metrics:
  """Sums over a batch; logits: f32[*labels.shape, vocab], labels: int32[...], weights: f32[...]."""
  return {'loss': jnp.sum(losses * weights),
          'accuracy': jnp.sum(credit.top_k_credit(logits, labels, 1) * weights),
          'top5_accuracy': jnp.sum(credit.top_k_credit(logits, labels, 5) * weights),
          'count': jnp.sum(weights)}


def mixture_sums(p: jax.Array, q: jax.Array, labels: jax.Array,
                 weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed loss and top-1 credit of the mixture (1 - weight) p + weight q at each of `weights`.

  p, q: f32[batch, vocab] distributions, labels: int32[batch], weights: f32[w]; returns f32[w]
  each. One mixture is built at a time.
  """
  def sums(weight):
    mixture = (1 - weight) * p + weight * q
    label_probs = jnp.take_along_axis(mixture, labels[:, None], axis=1)[:, 0]
    return -jnp.sum(jnp.log(label_probs)), jnp.sum(credit.top_k_credit(mixture, labels, 1))

  return jax.lax.map(sums, weights)


def eval_step(state: train_state.TrainState, batch: tuple[jax.Array, ...]) -> Metrics:
  features, labels, weights = batch
  logits = state.apply_fn({'params': state.params}, features, deterministic=True)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return batch_metrics(logits, labels, weights, losses)


def perplexity(loss: float) -> float:
  """exp(mean log loss), capped below float overflow."""
  return math.exp(min(loss, 700.0))


def bits(loss: float) -> float:
  """A mean log loss in nats as bits per token: per character at level 'char'."""
  return loss / math.log(2)


def summarize(sums: dict[str, Any]) -> dict[str, float]:
  """Means per window from summed metrics (host values); NaN when no window counted."""
  count = float(sums['count'])
  means = {k: float(v) / count if count else math.nan for k, v in sums.items()
           if k not in COUNTS}
  means['perplexity'] = perplexity(means['loss'])
  means['bits'] = bits(means['loss'])
  return means


def evaluate(eval_fn, state, windows: data.Windows, batch_size: int,
             parallel: Parallel | None = None) -> dict[str, float]:
  """Metrics over every window, summed on the device and read once; with `parallel`, each
  batch is split over its mesh (the state must be on the mesh already)."""
  total = None
  rows = parallel.rows(batch_size) if parallel else slice(None)
  for batch in data.batches(windows, batch_size, rows=rows):
    metrics = eval_fn(state, parallel.batch(batch, batch_size) if parallel else batch)
    total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
  return summarize(jax.device_get(total))


def baselines(train: data.Windows, windows: data.Windows, vocab_size: int) -> dict[str, float]:
  """The walkthrough's naive guesses, scored on `windows`, knowing only the training labels.

  most_frequent: always the commonest training label ("the"). unigram: a word drawn from the
  training label frequencies (expected accuracy, and log loss with add-one smoothing).
  """
  train_counts = np.bincount(train.labels, minlength=vocab_size)
  eval_counts = np.bincount(windows.labels, minlength=vocab_size)
  frequencies = train_counts / train_counts.sum()
  smoothed = (train_counts + 1) / (train_counts.sum() + vocab_size)
  return {'most_frequent_accuracy': eval_counts[train_counts.argmax()] / len(windows),
          'unigram_accuracy': float(eval_counts @ frequencies) / len(windows),
          'unigram_loss': float(-(eval_counts @ np.log(smoothed)) / len(windows))}


def final_evaluation(workdir: Path, manager, state, dataset: data.Dataset, eval_fn,
                     config: Config, parallel: Parallel | None = None) -> dict[str, Any]:
  """Scores the best checkpoint on validation (and test) beside the naive and n-gram baselines;
  `state` gives the structure (and placement) to restore into."""
  step = manager.best_step()
  state, progress = checkpoints.read_back(manager, step, state)
  state = optimizer.for_evaluation(state)
  best = progress['epoch']
  results = {'best_epoch': best}
  for name, windows in (('valid', dataset.valid), ('test', dataset.test)):
    if not len(windows):
      continue
    scores = evaluate(eval_fn, state, windows, config.train.eval_batch_size, parallel)
    naive = baselines(dataset.train, windows, dataset.tokenizer.vocab_size)
    if config.data.training_length >= ngram.ORDER - 1:
      naive |= ngram.baseline(dataset, windows)
    results[name] = scores | {'baselines': naive}
    logging.info('Best epoch %d on %s: loss %.4f (%.4f bits) accuracy %.4f top-5 %.4f | '
                 'baselines: %s', best, name, scores['loss'], scores['bits'], scores['accuracy'],
                 scores['top5_accuracy'],
                 ' '.join(f'{key} {value:.4f}' for key, value in naive.items()))
  checkpoints.write_file(workdir / checkpoints.RESULTS, json.dumps(results, indent=2))
  return results
