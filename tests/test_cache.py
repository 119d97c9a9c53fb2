"""The continuous cache against a step-by-step NumPy reference."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.evaluation import cache
from rnn_jax.evaluation import evaluate as evaluation
from rnn_jax.model.word_rnn import WordRNN


def reference_scores(model, params, windows, theta, weight):
  """Loss and accuracy of the mixture, with h read one token at a time through WordRNN.read."""
  features, labels = windows.take(np.arange(len(windows)))
  losses, correct = [], []
  for window, label in zip(features, labels):
    state, hidden = None, []
    for token in window:
      state = read(model, params, np.int32([[token]]), state)
      hidden.append(np.asarray(last_h(model, params, state), np.float64)[0])
    hidden = np.array(hidden)
    logits = model.apply({'params': params}, state, method=WordRNN.predict)[0]
    model_probs = np.asarray(jax.nn.softmax(logits), np.float64)
    scores = theta * hidden[:-1] @ hidden[-1]
    attention = np.exp(scores - scores.max())
    attention /= attention.sum()
    cache_probs = np.zeros_like(model_probs)
    np.add.at(cache_probs, window[1:], attention)
    mixture = (1 - weight) * model_probs + weight * cache_probs
    losses.append(-np.log(mixture[label]))
    correct.append(mixture[label] >= mixture.max())
  return np.mean(losses), np.mean(correct)


@functools.partial(jax.jit, static_argnames='model')
def read(model, params, tokens, state):
  return model.apply({'params': params}, tokens, state, method=WordRNN.read)


@functools.partial(jax.jit, static_argnames='model')
def last_h(model, params, state):
  """The last layer's h: the state's output, as the cell defines it."""
  return model.apply({'params': params}, state, method=lambda m, s: m.cell.output(s[-1]))


@pytest.fixture(scope='module')
def run(trained_cell):
  workdir, _ = trained_cell
  config, _, model, params = train.load(workdir)
  return model, params, data.prepare(config)


def test_grid_matches_the_step_by_step_reference(run):
  model, params, dataset = run
  grid = cache.grid_scores(model, params, dataset.valid)
  for theta, weight in ((0, 2), (3, 1), (6, 5)):
    loss, accuracy = reference_scores(model, params, dataset.valid, cache.THETAS[theta],
                                      cache.WEIGHTS[weight])
    assert grid['loss'][theta, weight] == pytest.approx(loss, rel=1e-4)
    assert grid['accuracy'][theta, weight] == pytest.approx(accuracy)


def test_weight_zero_is_the_model_alone_and_the_choice_is_the_best_on_validation(run,
                                                                                trained_cell):
  model, params, dataset = run
  _, results = trained_cell
  grid = cache.grid_scores(model, params, dataset.valid)
  np.testing.assert_allclose(grid['loss'][:, 0], results['valid']['loss'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grid['accuracy'][:, 0], results['valid']['accuracy'])
  tuned = cache.tune_and_score(model, params, dataset)
  best = np.unravel_index(np.argmin(grid['loss']), grid['loss'].shape)
  assert (tuned['theta'], tuned['weight']) == (cache.THETAS[best[0]], cache.WEIGHTS[best[1]])
  assert tuned['valid']['loss'] == pytest.approx(grid['loss'].min())
  assert set(tuned) == {'theta', 'weight', 'valid', 'test'}
  workdir, _ = trained_cell
  reported = evaluation.evaluate_run(workdir, 'test', cache=True)
  assert reported['cache_loss'] == pytest.approx(tuned['test']['loss'])
  assert 'rnn-jax + cache' in evaluation.table(reported)


def test_a_bidirectional_model_is_refused(run):
  model, params, dataset = run
  both_ways = WordRNN(dataclasses.replace(model.config, bidirectional=True), model.vocab_size)
  with pytest.raises(UserError, match='bidirectional'):
    cache.tune_and_score(both_ways, params, dataset)
