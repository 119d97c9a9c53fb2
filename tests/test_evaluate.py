"""Tests for rnn_jax.evaluation and experiments.evaluate: figures against hand computations."""

import dataclasses
import json
import math
from pathlib import Path
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.configs import Config, DataConfig
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.evaluation import evaluate as evaluation
from rnn_jax.model import ngram
from rnn_jax.training import checkpoints

from conftest import reference_credit, tiny_config

REPO = Path(__file__).parents[1]
REQUIRED_KEYS = {'loss', 'perplexity', 'accuracy', 'top5_accuracy', 'num_windows',
                 'baseline_most_frequent_accuracy', 'baseline_unigram_accuracy',
                 'kneser_ney_loss', 'kneser_ney_accuracy', 'split', 'checkpoint', 'epoch',
                 'workdir'}


def untrained_run(workdir: Path, config: Config) -> Path:
  """A work dir as training leaves it, its only checkpoint the initial params as epoch 1."""
  dataset = data.prepare(config)
  checkpoints.start_run(workdir, config, dataset.tokenizer)
  manager = checkpoints.manager(workdir)
  state = train.create_train_state(config, dataset.tokenizer.vocab_size)
  checkpoints.save(manager, 1, state, {'epoch': 1}, val_loss=1.0)
  manager.wait_until_finished()
  manager.close()
  return workdir


def hand_scores(workdir: Path, split: str) -> dict[str, float]:
  """The model's figures over every window of the split, from its logits in float64."""
  config, _, model, params = train.load(workdir)
  windows = getattr(data.prepare(config), split)
  features, labels = windows.take(np.arange(len(windows)))
  logits = np.asarray(model.apply({'params': params}, features, deterministic=True), np.float64)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  loss = -log_probs[np.arange(len(labels)), labels].mean()
  return {'loss': loss, 'perplexity': math.exp(loss),
          'accuracy': np.mean(reference_credit(logits, labels, 1)),
          'top5_accuracy': np.mean(reference_credit(logits, labels, 5)),
          'num_windows': len(labels)}


@pytest.mark.parametrize('split', ['valid', 'test'])
def test_trained_run_scores_as_computed_by_hand(trained, split):
  workdir, results = trained
  scores = evaluation.evaluate_run(workdir, split)
  expected = hand_scores(workdir, split)
  assert {k: scores[k] for k in expected} == pytest.approx(expected, rel=1e-5)
  assert (scores['split'], scores['checkpoint'], scores['epoch']) == (
      split, 'best', results['best_epoch'])
  # Training's final evaluation scored the same checkpoint in smaller batches.
  assert scores['loss'] == pytest.approx(results[split]['loss'], rel=1e-5)


def test_untrained_run_scores_as_computed_by_hand(corpus, tmp_path):
  # Random params leave accuracy, top-5 and loss far apart, where the trained model is ~perfect.
  config = tiny_config(corpus)
  # Every word its own id: with these random params, accuracy is neither 0 nor 1.
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, min_count=0))
  workdir = untrained_run(tmp_path, config)
  scores = evaluation.evaluate_run(workdir, checkpoint='latest')
  expected = hand_scores(workdir, 'valid')
  assert 0 < expected['accuracy'] < expected['top5_accuracy'] < 1
  assert {k: scores[k] for k in expected} == pytest.approx(expected, rel=1e-5)
  assert scores['epoch'] == 1


def test_naive_baselines_by_hand():
  train_windows = data.make_windows([[1, 2, 2, 2, 3, 2]], length=1)  # labels 2 2 2 3 2
  eval_windows = data.make_windows([[4, 2, 3, 3, 1]], length=1)  # labels 2 3 3 1
  scores = evaluation.naive_baselines(train_windows, eval_windows, vocab_size=5)
  # Always "2": right once in 4. Drawing 2 (p=4/5) or 3 (p=1/5): 4/5 * 1/4 + 1/5 * 2/4.
  # Add-one smoothing over 5 ids and 5 training labels: p(1)=1/10, p(2)=5/10, p(3)=2/10.
  assert scores == pytest.approx({
      'baseline_most_frequent_accuracy': 0.25,
      'baseline_unigram_accuracy': 0.3,
      'baseline_unigram_loss': -(math.log(0.5) + 2 * math.log(0.2) + math.log(0.1)) / 4})


@pytest.fixture(scope='module')
def random_corpus(tmp_path_factory) -> Path:
  """Texts of random words: n-gram contexts that are often unseen or ambiguous."""
  rng = np.random.default_rng(1)
  words = [f'w{i}' for i in range(12)]
  lines = [' '.join(rng.choice(words, size=rng.integers(6, 20))) for _ in range(30)]
  path = tmp_path_factory.mktemp('random') / 'random.txt'
  path.write_text('\n'.join(lines))
  return path


def last_tokens(windows: data.Windows, order: int) -> tuple[np.ndarray, np.ndarray]:
  features, labels = windows.take(np.arange(len(windows)))
  return features[:, features.shape[1] - (order - 1):], labels


@pytest.mark.parametrize('order', [1, 2, 4])
@pytest.mark.parametrize('split', ['abstracts', 'windows'])
def test_ngram_baseline_is_kneser_ney_of_the_training_data(random_corpus, split, order):
  config = Config(data=DataConfig(data=str(random_corpus), training_length=4, min_extra_words=0,
                                  split=split))
  dataset = data.prepare(config)
  if split == 'abstracts':
    train_events = ngram.events(dataset.train_texts, order)
  else:
    assert dataset.train_texts is None
    train_events = last_tokens(dataset.train, order)
  model = ngram.KneserNey.fit(*train_events, dataset.tokenizer.vocab_size, discount=0.75)
  expected = model.score(*last_tokens(dataset.valid, order))
  scores = ngram.baseline(dataset, dataset.valid, order)
  assert scores == pytest.approx({'kneser_ney_loss': expected['loss'],
                                  'kneser_ney_accuracy': expected['accuracy']}, rel=1e-12)
  assert 0 < scores['kneser_ney_accuracy'] < 1


@pytest.mark.parametrize('order, message', [(0, 'ngram_order must be >= 1, got 0'),
                                            (6, 'a 6-gram model reads 5 tokens')])
def test_ngram_baseline_refuses_orders_the_windows_cannot_serve(random_corpus, order, message):
  config = Config(data=DataConfig(data=str(random_corpus), training_length=4, min_extra_words=0))
  dataset = data.prepare(config)
  with pytest.raises(UserError, match=message):
    ngram.baseline(dataset, dataset.valid, order)


def test_evaluate_run_refuses_bad_choices(trained):
  workdir, _ = trained
  with pytest.raises(UserError, match="split: 'valid' or 'test', not 'train'"):
    evaluation.evaluate_run(workdir, split='train')
  with pytest.raises(UserError, match="'best', 'latest' or a step, not 'first'"):
    evaluation.evaluate_run(workdir, checkpoint='first')


def test_evaluate_run_refuses_a_run_whose_data_changed(corpus, tmp_path):
  copy = tmp_path / 'corpus.txt'
  copy.write_text(corpus.read_text())
  workdir = untrained_run(tmp_path / 'run', tiny_config(copy))
  # A text too short to keep changes nothing; a kept one moves the split, wherever it lands.
  copy.write_text(corpus.read_text() + '\nomega' * 10)
  assert evaluation.evaluate_run(workdir)['loss'] > 0
  copy.write_text(corpus.read_text() + '\n' + 'omega ' * 10)
  with pytest.raises(UserError, match='the data changed since the run'):
    evaluation.evaluate_run(workdir)


def run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'experiments.evaluate', *args], cwd=REPO,
                        capture_output=True, text=True)


def test_cli_prints_a_table_and_the_figures_as_json(trained):
  workdir, _ = trained
  result = run_cli(f'--workdir={workdir}', '--split=valid')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  printed = json.loads(lines[-1])
  assert REQUIRED_KEYS <= set(printed)
  expected = evaluation.evaluate_run(workdir, 'valid')
  assert printed.keys() == expected.keys()
  for key, value in expected.items():
    assert printed[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-6))
  assert lines[1].split() == ['rnn-jax', 'most', 'frequent', 'unigram', 'Kneser-Ney', '4-gram']
  assert [line[:14] for line in lines[2:7]] == [
      'log loss      ', 'bits per token', 'perplexity    ', 'accuracy      ', 'top-5 accuracy']
  assert float(lines[3].split()[3]) == pytest.approx(expected['loss'] / math.log(2), abs=1e-4)


def test_cli_scores_a_checkpoint_named_by_its_step(trained):
  workdir, results = trained
  manager = checkpoints.manager(workdir)
  steps, best = manager.all_steps(), manager.best_step()
  manager.close()
  other = next(step for step in steps if step != best)
  result = run_cli(f'--workdir={workdir}', f'--checkpoint={other}')
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  assert printed['checkpoint'] == other and printed['epoch'] != results['best_epoch']
  assert f'checkpoint {other} (epoch {printed["epoch"]})' in result.stdout
  # Training's own validation of that epoch scored the same parameters.
  metrics = (workdir / checkpoints.METRICS).read_text().splitlines()
  epoch = next(line for line in map(json.loads, metrics)
               if line['epoch'] == printed['epoch'])
  assert printed['loss'] == pytest.approx(epoch['val_loss'], rel=1e-5)
  absent = max(steps) + 1
  with pytest.raises(UserError, match=(f'{workdir} holds no checkpoint {absent} '
                                       f'\\(it holds {", ".join(map(str, steps))}\\)$')):
    train.load(workdir, absent)


def test_bad_input_is_one_line_and_the_cli_prints_it_so(trained, corpus, tmp_path):
  workdir, _ = trained
  no_test = dataclasses.replace(tiny_config(corpus).data, valid_fraction=0.2)
  no_test_run = untrained_run(tmp_path / 'no_test', Config(data=no_test))
  with pytest.raises(UserError, match="split: 'valid' or 'test', not 'nope'"):
    evaluation.evaluate_run(workdir, 'nope')
  with pytest.raises(UserError, match=f'{tmp_path} holds no run'):
    evaluation.evaluate_run(tmp_path)
  # The command prints the library's message as its one line (config_flags.run).
  result = run_cli(f'--workdir={no_test_run}', '--split=test')
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert errors == [result.stderr.strip().splitlines()[-1]]
  assert errors[0].startswith(f'error: the run in {no_test_run} has no test')
  assert 'Traceback' not in result.stderr


def test_mixture_ends_are_the_model_and_the_ngram_and_its_weight_is_the_best_on_valid(trained):
  workdir, _ = trained
  config, _, model, params = train.load(workdir)
  dataset = data.prepare(config)
  kneser_ney = ngram.fit_baseline(dataset, 3)
  scores = evaluation._mixture_scores(model, params, kneser_ney, dataset.valid, 3)
  alone = evaluation.evaluate_run(workdir, 'valid', ngram_order=3, mixture=True)
  # Weight 0 is the n-gram alone, weight 1 the model alone.
  np.testing.assert_allclose(scores['loss'][[0, -1]], [alone['kneser_ney_loss'], alone['loss']],
                             rtol=1e-4)
  np.testing.assert_allclose(scores['accuracy'][[0, -1]],
                             [alone['kneser_ney_accuracy'], alone['accuracy']])
  best = int(np.argmin(scores['loss']))
  assert alone['mixture_weight'] == round(evaluation.WEIGHTS[best], 2)
  assert alone['mixture_loss'] == pytest.approx(scores['loss'][best], rel=1e-6)
  assert alone['mixture_loss'] <= min(alone['loss'], alone['kneser_ney_loss']) + 1e-6


def test_a_tie_in_the_mixture_shares_its_credit(trained):
  # Zero params make the model uniform over every id; the n-gram rates the label and one other
  # word alike, above the rest.
  workdir, _ = trained
  config, _, model, params = train.load(workdir)
  features, labels = data.prepare(config).valid.take(np.arange(8))
  vocab = model.vocab_size
  ngram_probs = np.full((8, vocab), 1.0, np.float32)
  ngram_probs[:, 0] = 0
  ngram_probs[np.arange(8), labels] = ngram_probs[np.arange(8), labels % (vocab - 1) + 1] = 4
  ngram_probs /= ngram_probs.sum(axis=1, keepdims=True)
  flat = jax.tree.map(jnp.zeros_like, params)
  _, credit = evaluation._mixture_sums(model, flat, features, labels, ngram_probs,
                                       evaluation.WEIGHTS)
  np.testing.assert_allclose(credit[:-1], 8 * 0.5, rtol=1e-6)  # any share of the n-gram
  np.testing.assert_allclose(credit[-1], 8 / vocab, rtol=1e-6)  # the model alone
