"""The continuous caches, the model's and the n-gram's, against step-by-step NumPy references."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.configs import Config, DataConfig
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.evaluation import cache
from rnn_jax.evaluation import evaluate as evaluation
from rnn_jax.model import ngram
from rnn_jax.model.word_rnn import WordRNN

from conftest import reference_credit


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
    correct.append(reference_credit(mixture, label, 1))
  return np.mean(losses), np.mean(correct)


@functools.partial(jax.jit, static_argnames='model')
def read(model, params, tokens, state):
  return model.apply({'params': params}, tokens, state, method=WordRNN.read)


@functools.partial(jax.jit, static_argnames='model')
def last_h(model, params, state):
  """The last layer's h: the state's output, as the cell defines it."""
  return model.apply({'params': params}, state, method=lambda m, s: m.cell.output(s[-1]))


@pytest.fixture(scope='module')
def run(trained):
  workdir, _ = trained
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


def test_weight_zero_is_the_model_alone_and_the_choice_is_the_best_on_validation(run, trained):
  model, params, dataset = run
  _, results = trained
  grid = cache.grid_scores(model, params, dataset.valid)
  np.testing.assert_allclose(grid['loss'][:, 0], results['valid']['loss'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grid['accuracy'][:, 0], results['valid']['accuracy'])
  tuned = cache.tune_and_score(model, params, dataset)
  best = np.unravel_index(np.argmin(grid['loss']), grid['loss'].shape)
  assert (tuned['theta'], tuned['weight']) == (cache.THETAS[best[0]], cache.WEIGHTS[best[1]])
  assert tuned['valid']['loss'] == pytest.approx(grid['loss'].min())
  assert set(tuned) == {'theta', 'weight', 'valid', 'test'}
  workdir, _ = trained
  reported = evaluation.evaluate_run(workdir, 'test', cache=True)
  assert reported['cache_loss'] == pytest.approx(tuned['test']['loss'])
  with_ngram = cache.ngram_tune_and_score(dataset)
  assert (reported['ngram_cache_weight'], reported['ngram_cache_loss'],
          reported['ngram_cache_accuracy']) == pytest.approx(
              (with_ngram['weight'], with_ngram['test']['loss'], with_ngram['test']['accuracy']))
  table = evaluation.table(reported)
  assert 'rnn-jax + cache' in table and 'Kneser-Ney 4-gram + cache' in table


def test_a_tie_in_the_mixture_shares_its_credit(run):
  # Zero params: a uniform model (over every id, padding included) and equal hidden states, so
  # every theta weighs the earlier positions alike. The cache holds 2 and 3 once each.
  model, params, _ = run
  flat = jax.tree.map(jnp.zeros_like, params)
  windows = data.make_windows([[5, 2, 3, 2]], length=3)  # [5, 2, 3] -> 2
  grid = cache.grid_scores(model, flat, windows)
  np.testing.assert_allclose(grid['accuracy'][:, 0], 1 / model.vocab_size, rtol=1e-6)
  np.testing.assert_allclose(grid['accuracy'][:, 1:], 0.5)


def test_a_bidirectional_model_is_refused(run):
  model, params, dataset = run
  both_ways = WordRNN(dataclasses.replace(model.config, bidirectional=True), model.vocab_size)
  with pytest.raises(UserError, match='bidirectional'):
    cache.tune_and_score(both_ways, params, dataset)


@pytest.fixture(scope='module')
def topical(tmp_path_factory) -> data.Dataset:
  """Texts that keep returning to their own three words: a cache helps where an n-gram cannot."""
  rng = np.random.default_rng(2)
  words = np.array([f'w{i}' for i in range(12)])
  lines = []
  for _ in range(60):
    topic = rng.choice(words, size=3, replace=False)
    length = rng.integers(8, 20)
    lines.append(' '.join(np.where(rng.random(length) < 0.6, rng.choice(topic, size=length),
                                   rng.choice(words, size=length))))
  path = tmp_path_factory.mktemp('topical') / 'topical.txt'
  path.write_text('\n'.join(lines))
  return data.prepare(Config(data=DataConfig(data=str(path), training_length=5, min_extra_words=0,
                                             min_count=0)))


def reference_ngram_scores(dataset, windows, weight):
  """Loss and accuracy of the 4-gram mixed with a cache that counts each follower once."""
  features, labels = windows.take(np.arange(len(windows)))
  kneser_ney = ngram.fit_baseline(dataset)
  ngram_probs = np.exp(kneser_ney.log_probs(features[:, -3:]).astype(np.float64))
  cache_probs = np.array([np.bincount(window[1:], minlength=ngram_probs.shape[1])
                          for window in features]) / (features.shape[1] - 1)
  mixture = (1 - weight) * ngram_probs + weight * cache_probs
  return (-np.log(mixture[np.arange(len(labels)), labels]).mean(),
          reference_credit(mixture, labels, 1).mean())


def test_the_ngram_cache_matches_numpy_and_its_weight_is_the_best_on_validation(topical):
  reference = {name: np.array([reference_ngram_scores(topical, windows, weight)
                               for weight in cache.WEIGHTS])
               for name, windows in (('valid', topical.valid), ('test', topical.test))}
  best = int(np.argmin(reference['valid'][:, 0]))
  assert best > 0  # the cache helps on these texts
  tuned = cache.ngram_tune_and_score(topical)
  assert tuned['weight'] == cache.WEIGHTS[best]
  for name, scores in reference.items():
    assert (tuned[name]['loss'], tuned[name]['accuracy']) == pytest.approx(scores[best], rel=1e-5)


def test_the_ngram_cache_at_weight_zero_is_the_plain_ngram(topical):
  grid = cache.ngram_grid_scores(ngram.fit_baseline(topical), topical.test)
  plain = ngram.baseline(topical, topical.test)
  assert (grid['loss'][0], grid['accuracy'][0]) == pytest.approx(
      (plain['kneser_ney_loss'], plain['kneser_ney_accuracy']), rel=1e-5)
  assert 0 < plain['kneser_ney_accuracy'] < 1


def test_a_tie_in_the_ngram_cache_shares_its_credit():
  # A unigram that rates 1 and 2 alike and above 3; the window's followers are 1 and 2 once each.
  windows = data.make_windows([[3, 1, 2, 1]], length=3)  # [3, 1, 2] -> 1
  kneser_ney = ngram.KneserNey.fit(*ngram.events([[1, 2]], 1), vocab_size=4)
  grid = cache.ngram_grid_scores(kneser_ney, windows)
  np.testing.assert_allclose(grid['accuracy'], 0.5)
