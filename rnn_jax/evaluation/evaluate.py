"""Scores a trained run on its validation or test windows beside naive and n-gram baselines.

The model's figures come from the code that scores it during training (`train.evaluate` with
`metrics.eval_step`); the baselines see only the training data and are scored on the same windows:
the walkthrough's two naive guesses (`metrics.baselines`) and an interpolated Kneser-Ney n-gram
model that reads the last order-1 tokens of each window.
"""

import functools
from pathlib import Path
import time
from typing import Any

from absl import logging
from flax.training import train_state
import jax
import numpy as np
import optax

from rnn_jax import train
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.evaluation import cache as continuous_cache
from rnn_jax.evaluation import dynamic as dynamic_evaluation
from rnn_jax.model import ngram
from rnn_jax.model.word_rnn import WordRNN
from rnn_jax.training import checkpoints
from rnn_jax.training import metrics

BATCH_SIZE = 2048  # windows per jitted evaluation step, the last batch padded
PROGRESS_EVERY = 5  # batches between progress lines; each line waits for the device
WEIGHTS = np.linspace(0, 1, 21)  # the model's share in a mixture with the n-gram, tried on valid
MIXTURE_BATCH = 1024  # windows per mixture step: two f32[batch, vocab] distributions and a mix


def evaluate_run(workdir: str | Path, split: str = 'valid', checkpoint: str | int = 'best',
                 ngram_order: int = ngram.ORDER, mixture: bool = False,
                 cache: bool = False, dynamic: bool = False) -> dict[str, Any]:
  """Scores a run's checkpoint on one split, rebuilt from the work dir alone.

  Returns a flat dict: what was scored (split, checkpoint, epoch, workdir, num_windows), the
  model's loss, perplexity, accuracy and top5_accuracy, the naive baselines (baseline_*) and the
  Kneser-Ney baseline (ngram_order, kneser_ney_*); with `mixture`, the model mixed with the
  n-gram (`interpolate`: mixture_weight, mixture_loss, mixture_accuracy); with `cache`, the
  model with a continuous cache over its window (`evaluation.cache`: cache_theta, cache_weight,
  cache_loss, cache_accuracy) and the Kneser-Ney baseline with the same cache at theta 0
  (ngram_cache_weight, ngram_cache_loss, ngram_cache_accuracy); with `dynamic`, the model
  adapting to the held-out text as it scores it (`evaluation.dynamic`: dynamic_lr,
  dynamic_decay, dynamic_loss, dynamic_accuracy, dynamic_top5_accuracy).
  """
  if split not in ('valid', 'test'):
    raise UserError(f"split: 'valid' or 'test', not {split!r}")
  config, tokenizer, model, params = train.load(workdir, checkpoint)
  ngram.check_order(ngram_order, config.data.training_length)
  dataset = data.prepare_run(config, tokenizer)
  # The same config and seed give the same split only from the same texts.
  # The tokenizer holds the word counts of the texts it was fitted on (the training texts, under
  # split 'abstracts'): another text anywhere moves the split, and so those counts.
  if dataset.tokenizer.to_json() != tokenizer.to_json():
    raise UserError(f'the data changed since the run in {workdir} was trained (other word '
                    'counts), so its windows cannot be rebuilt')
  windows = getattr(dataset, split)
  if not len(windows):
    raise UserError(f'the run in {workdir} has no {split} windows (its train and validation '
                    'fractions leave none)')
  # eval_step reads only the model and its params: an optimizer without state stands in.
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.identity())
  eval_fn = _with_progress(jax.jit(metrics.eval_step), len(windows))
  scores = metrics.evaluate(eval_fn, state, windows, BATCH_SIZE)
  results = ({'split': split, 'checkpoint': checkpoint, 'epoch': _epoch(workdir, checkpoint),
              'workdir': str(Path(workdir).absolute()), 'num_windows': len(windows)}
             | scores
             | naive_baselines(dataset.train, windows, dataset.tokenizer.vocab_size)
             | {'ngram_order': ngram_order}
             | ngram.baseline(dataset, windows, ngram_order))
  if mixture:
    mixed = interpolate(model, params, dataset, ngram_order)
    results |= {'mixture_weight': mixed['weight'], 'mixture_loss': mixed[split]['loss'],
                'mixture_accuracy': mixed[split]['accuracy']}
  if cache:
    cached = continuous_cache.tune_and_score(model, params, dataset)
    results |= {'cache_theta': cached['theta'], 'cache_weight': cached['weight'],
                'cache_loss': cached[split]['loss'], 'cache_accuracy': cached[split]['accuracy']}
    cached = continuous_cache.ngram_tune_and_score(dataset, ngram_order)
    results |= {'ngram_cache_weight': cached['weight'], 'ngram_cache_loss': cached[split]['loss'],
                'ngram_cache_accuracy': cached[split]['accuracy']}
  if dynamic:
    adapted = dynamic_evaluation.tune_and_score(model, params, dataset)
    results |= {'dynamic_lr': adapted['lr'], 'dynamic_decay': adapted['decay']} | {
        f'dynamic_{name}': value for name, value in adapted[split].items()}
  return results


def naive_baselines(train_windows: data.Windows, windows: data.Windows,
                    vocab_size: int) -> dict[str, float]:
  """`metrics.baselines` as baseline_* keys: most_frequent_accuracy, unigram_accuracy and _loss."""
  return {f'baseline_{name}': float(value)
          for name, value in metrics.baselines(train_windows, windows, vocab_size).items()}


def interpolate(model: WordRNN, params: Any, dataset: data.Dataset,
                order: int = ngram.ORDER) -> dict[str, Any]:
  """The model's next-word distribution mixed with the n-gram's, weight p + (1 - weight) q.

  The weight is the one of WEIGHTS with the lowest validation loss; the figures at that weight
  follow for validation and, where the run has one, test.
  """
  ngram.check_order(order, dataset.valid.length)
  kneser_ney = ngram.fit_baseline(dataset, order)
  results = {name: _mixture_scores(model, params, kneser_ney, windows, order)
             for name, windows in (('valid', dataset.valid), ('test', dataset.test))
             if len(windows)}
  best = int(np.argmin(results['valid']['loss']))
  return {'weight': round(float(WEIGHTS[best]), 2)} | {
      name: {'loss': float(scores['loss'][best]), 'accuracy': float(scores['accuracy'][best])}
      for name, scores in results.items()}


def _mixture_scores(model, params, kneser_ney: ngram.KneserNey, windows: data.Windows,
                    order: int) -> dict[str, np.ndarray]:
  """Mean loss and accuracy of the mixture at each of WEIGHTS: f64[len(WEIGHTS)] each."""
  contexts, _ = ngram.window_contexts(windows, order)
  loss, correct = np.zeros(len(WEIGHTS)), np.zeros(len(WEIGHTS))
  for begin in range(0, len(windows), MIXTURE_BATCH):
    indices = np.arange(begin, min(begin + MIXTURE_BATCH, len(windows)))
    features, labels = windows.take(indices)
    ngram_probs = np.exp(kneser_ney.log_probs(contexts[indices]))
    batch_loss, batch_correct = jax.device_get(
        _mixture_sums(model, params, features, labels, ngram_probs, WEIGHTS))
    loss += batch_loss
    correct += batch_correct
  return {'loss': loss / len(windows), 'accuracy': correct / len(windows)}


@functools.partial(jax.jit, static_argnames='model')
def _mixture_sums(model, params, features, labels, ngram_probs, weights):
  """Summed loss and top-1 credit, each f32[weights], at each of the model's `weights`."""
  model_probs = jax.nn.softmax(model.apply({'params': params}, features, deterministic=True))
  return metrics.mixture_sums(ngram_probs, model_probs, labels, weights)


def table(results: dict[str, Any]) -> str:
  """The figures of `evaluate_run` side by side, one row per figure, a column per model."""
  columns = {  # loss, accuracy, top-5 accuracy
      'rnn-jax': (results['loss'], results['accuracy'], results['top5_accuracy']),
      'most frequent': (None, results['baseline_most_frequent_accuracy'], None),
      'unigram': (results['baseline_unigram_loss'], results['baseline_unigram_accuracy'], None),
      f'Kneser-Ney {results["ngram_order"]}-gram': (results['kneser_ney_loss'],
                                                    results['kneser_ney_accuracy'], None),
  }
  if 'cache_loss' in results:
    columns['rnn-jax + cache'] = (results['cache_loss'], results['cache_accuracy'], None)
    columns[f'Kneser-Ney {results["ngram_order"]}-gram + cache'] = (
        results['ngram_cache_loss'], results['ngram_cache_accuracy'], None)
  if 'dynamic_loss' in results:
    columns['rnn-jax, dynamic'] = (results['dynamic_loss'], results['dynamic_accuracy'],
                                   results['dynamic_top5_accuracy'])
  if 'mixture_loss' in results:
    columns[f'mixed ({results["mixture_weight"]:.2f} rnn-jax)'] = (
        results['mixture_loss'], results['mixture_accuracy'], None)
  rows = (('log loss', '{:.4f}'), ('bits per token', '{:.4f}'), ('perplexity', '{:,.2f}'),
          ('accuracy', '{:.2%}'), ('top-5 accuracy', '{:.2%}'))
  cells = {name: ['-' if value is None else form.format(value)
                  for value, (_, form) in zip(_with_loss_figures(*values), rows)]
           for name, values in columns.items()}
  widths = {name: max(len(name), *map(len, column)) for name, column in cells.items()}
  label_width = max(len(label) for label, _ in rows)
  lines = [' ' * label_width + ''.join(f'   {name:>{widths[name]}}' for name in cells)]
  for i, (label, _) in enumerate(rows):
    lines.append(f'{label:<{label_width}}' +
                 ''.join(f'   {column[i]:>{widths[name]}}' for name, column in cells.items()))
  which = results['checkpoint']
  which = f'checkpoint {which}' if isinstance(which, int) else f'{which} checkpoint'
  heading = (f'{results["workdir"]}: {which} (epoch '
             f'{results["epoch"]}) on {results["num_windows"]:,} {results["split"]} windows')
  return '\n'.join([heading, *lines])


def _with_loss_figures(loss: float | None, *others: float | None) -> tuple[float | None, ...]:
  """(loss, its bits, its perplexity, *others): figures that say the same as the loss."""
  if loss is None:
    return None, None, None, *others
  return loss, metrics.bits(loss), metrics.perplexity(loss), *others


def _epoch(workdir: str | Path, checkpoint: str | int) -> int:
  """The epochs finished when the checkpoint was saved."""
  manager = checkpoints.manager(workdir)
  try:
    return checkpoints.progress_of(manager, checkpoints.step_of(manager, checkpoint))['epoch']
  finally:
    manager.close()


def _with_progress(eval_fn, num_windows: int):
  """eval_fn, logging the share of windows scored every PROGRESS_EVERY batches."""
  num_batches = -(-num_windows // BATCH_SIZE)
  start, calls = time.perf_counter(), 0

  def step(state, batch):
    nonlocal calls
    metrics = eval_fn(state, batch)
    calls += 1
    if calls % PROGRESS_EVERY == 0:
      # Dispatch runs ahead of the device: wait, so the line reports work done.
      jax.block_until_ready(metrics)
      rate = calls * BATCH_SIZE / (time.perf_counter() - start)
      logging.info('Scored batch %d/%d (%.0f windows/s)', calls, num_batches, rate)
    return metrics

  return step
