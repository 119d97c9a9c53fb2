import json
import math
from pathlib import Path
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.configs import Config, ModelConfig, TrainConfig
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.training import checkpoints
from rnn_jax.model import credit
from rnn_jax.training import metrics

from conftest import CYCLE, read_config, read_metrics, reference_credit, tiny_config

REPO = Path(__file__).parents[1]


def test_loss_falls_and_metrics_are_logged(trained):
  workdir, _ = trained
  metrics = read_metrics(workdir)
  assert [m['epoch'] for m in metrics] == [1, 2, 3]
  assert metrics[-1]['train_loss'] < metrics[0]['train_loss'] - 0.5
  assert metrics[-1]['val_loss'] < metrics[0]['val_loss'] - 0.5
  assert set(metrics[0]) == {'epoch', 'train_loss', 'train_bits', 'train_accuracy', 'val_loss',
                             'val_bits', 'val_accuracy', 'val_top5_accuracy', 'seconds'}
  for split in ('train', 'val'):
    assert metrics[0][f'{split}_bits'] == pytest.approx(metrics[0][f'{split}_loss'] / math.log(2))


def test_best_checkpoint_restores_to_the_same_predictions(trained):
  workdir, results = trained
  metrics = read_metrics(workdir)
  best = min(metrics, key=lambda m: m['val_loss'])
  assert results['best_epoch'] == best['epoch']
  assert results['valid']['loss'] == pytest.approx(best['val_loss'], rel=1e-6)
  config, tokenizer, model, params = train.load(workdir)
  valid = data.prepare(config).valid
  features, labels = valid.take(np.arange(len(valid)))
  logits = model.apply({'params': params}, features, deterministic=True)
  log_probs = jax.nn.log_softmax(logits)
  loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()
  assert float(loss) == pytest.approx(best['val_loss'], rel=1e-5)
  assert tokenizer.vocab_size == len(CYCLE) + 2  # padding, the unknown word and the cycle's


def test_resume_continues_exactly_where_the_run_stopped(corpus, trained_cell, tmp_path):
  workdir, _ = trained_cell
  cell = read_config(workdir)['cell']
  train.train_and_evaluate(tiny_config(corpus, cell, max_epochs=1), tmp_path)
  # As if the run died after logging epoch 2 but before its checkpoint was written.
  with open(tmp_path / checkpoints.METRICS, 'a') as f:
    f.write('{"epoch": 2, "train_loss": 0.0, "val_loss": 0.0}\n')
    f.write('{"epoch": 3, "train_lo')  # and killed while appending the next
  train.train_and_evaluate(tiny_config(corpus, cell, max_epochs=3), tmp_path, resume=True)
  resumed, straight = read_metrics(tmp_path), read_metrics(workdir)
  assert [m['epoch'] for m in resumed] == [1, 2, 3]
  for a, b in zip(resumed, straight):
    assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)
    assert a['val_loss'] == pytest.approx(b['val_loss'], rel=1e-5)
  # The last parameters, bit for bit.
  for got, want in zip(jax.tree.leaves(train.load(tmp_path, 'latest')[3]),
                       jax.tree.leaves(train.load(workdir, 'latest')[3]), strict=True):
    np.testing.assert_array_equal(got, want)


def test_a_run_in_the_workdir_is_never_silently_replaced(corpus, trained):
  workdir, _ = trained
  other = tiny_config(corpus, learning_rate=0.5)
  with pytest.raises(UserError, match=r'already holds a run of another configuration '
                                      r'\(learning_rate: 0.03 -> 0.5\)'):
    checkpoints.config_for(workdir, other, resume=False, overwrite=False)
  with pytest.raises(UserError, match='exclude each other'):
    checkpoints.config_for(workdir, other, resume=True, overwrite=True)
  resumed = checkpoints.config_for(workdir, tiny_config(corpus, learning_rate=0.5, max_epochs=9),
                                   resume=True, overwrite=False)
  assert (resumed.train.learning_rate, resumed.train.max_epochs) == (0.03, 9)
  assert checkpoints.config_for(workdir, other, resume=False, overwrite=True) == other


def test_overwrite_starts_a_fresh_run(corpus, tmp_path):
  train.train_and_evaluate(tiny_config(corpus, max_epochs=2), tmp_path)
  train.train_and_evaluate(tiny_config(corpus, max_epochs=1), tmp_path, overwrite=True)
  assert [m['epoch'] for m in read_metrics(tmp_path)] == [1]
  config, _ = checkpoints.read_run(tmp_path)
  assert config.train.max_epochs == 1


def test_cli_refuses_a_workdir_holding_another_run(trained):
  workdir, _ = trained
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}', '--rnn_units=3'],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: {workdir} already holds a run of another configuration')
  assert 'Traceback' not in result.stderr


def test_batch_metrics_match_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 10)).astype(np.float32)
  labels = rng.integers(0, 10, size=6)
  weights = np.array([1, 1, 1, 1, 0, 0], np.float32)
  losses = -np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[np.arange(6), labels]
  sums = metrics.batch_metrics(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights),
                               jnp.asarray(losses))
  order = np.argsort(-logits, axis=1)
  ranks = np.array([list(row).index(label) for row, label in zip(order, labels)])
  np.testing.assert_allclose(sums['loss'], losses[:4].sum(), rtol=1e-6)
  assert float(sums['accuracy']) == (ranks[:4] == 0).sum()
  assert float(sums['top5_accuracy']) == (ranks[:4] < 5).sum()
  assert float(sums['count']) == 4


def test_a_tie_shares_its_credit_and_non_finite_logits_never_count_as_correct():
  logits = jnp.array([[1.0, 3.0, 3.0, 0.0, 0.0, 0.0],  # a tie of 2 at the top: half a hit
                      [1e-30, 0.0, -1e30, 2e-30, 0.0, 0.0],  # tiny gaps and a huge one
                      [jnp.nan, 1.0, 0.0, 0.0, 0.0, 0.0],  # a NaN elsewhere
                      [jnp.inf, 1.0, 0.0, 0.0, 0.0, 0.0],  # an infinite logit above the label
                      [6.0, 5.0, 4.0, 3.0, 1.0, 1.0]])  # 4 above, the 5th place shared by 2
  labels = jnp.array([1, 0, 1, 1, 5])
  sums = metrics.batch_metrics(logits, labels, jnp.ones(5), jnp.zeros(5))
  assert float(sums['accuracy']) == 0.5  # only the tie: the second row has 2e-30 above
  assert float(sums['top5_accuracy']) == 1 + 1 + 0 + 1 + 0.5  # the NaN row earns nothing


@pytest.mark.parametrize('vocab', [16, 10])
def test_constant_logits_earn_chance_and_no_more(vocab):
  labels = jnp.arange(1, 9) % vocab
  sums = metrics.batch_metrics(jnp.zeros((8, vocab)), labels, jnp.ones(8), jnp.zeros(8))
  # 1/16 and 5/16 are exact in float32; 1/10 is not.
  assert float(sums['accuracy']) == pytest.approx(8 / vocab, rel=1e-6, abs=0)
  assert float(sums['top5_accuracy']) == pytest.approx(8 * 5 / vocab, rel=1e-6, abs=0)
  if vocab == 16:
    assert (float(sums['accuracy']), float(sums['top5_accuracy'])) == (0.5, 2.5)


@pytest.mark.parametrize('k', [1, 5])
def test_top_k_credit_matches_numpy_where_ties_are_many(k):
  rng = np.random.default_rng(k)
  scores = rng.integers(0, 4, size=(3, 100, 40)).astype(np.float32)  # time, batch, vocab
  scores[0, 0] = 2  # all tied
  labels = rng.integers(0, 40, size=(3, 100))
  expected = reference_credit(scores, labels, k)
  assert 0 < np.mean(expected) < 1 and len(np.unique(expected)) > 3  # partial credits
  np.testing.assert_allclose(credit.top_k_credit(scores, labels, k), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(credit.top_k_credit)(jnp.asarray(scores), labels, k),
                             expected, rtol=1e-6)


def test_frozen_embeddings_keep_the_given_matrix(corpus):
  config = tiny_config(corpus)
  config = Config(data=config.data, train=config.train,
                  model=ModelConfig(embedding_dim=8, rnn_units=8, dense_units=16,
                                    trainable_embeddings=False))
  matrix = np.random.default_rng(0).normal(size=(9, 8)).astype(np.float32)
  state = train.create_train_state(config, 9, embedding_matrix=matrix)
  before = jax.tree.map(np.array, state.params)
  batch = (jnp.ones((4, 4), jnp.int32), jnp.arange(4, dtype=jnp.int32), jnp.ones(4))
  state, _ = jax.jit(train.train_step)(state, batch, jax.random.key(0))
  np.testing.assert_array_equal(state.params['embed']['embedding'], matrix)
  assert not np.array_equal(state.params['dense']['kernel'], before['dense']['kernel'])
  with pytest.raises(UserError, match=r'shape \(9, 7\), expected \(9, 8\)'):
    train.create_train_state(config, 9, embedding_matrix=matrix[:, :7])


def test_a_non_finite_loss_names_its_step():
  steps = [{'loss': np.float32(1.0), 'count': np.float32(2)},
           {'loss': np.float32(np.nan), 'count': np.float32(2)}]
  with pytest.raises(UserError, match=r'became non-finite at step 12 \(loss nan\)'):
    train._accumulate({}, steps, first_step=10)


def test_early_stopping_has_keras_patience():
  config = TrainConfig(patience=2)
  stopper = train._early_stopping(config, {})
  epochs = 0
  for loss in [5.0, 4.0, 4.5, 4.2, 3.0]:
    epochs += 1
    stopper = stopper.update(loss)
    if stopper.should_stop:
      break
  assert epochs == 4  # two epochs without improving after the best, 4.0
  resumed = train._early_stopping(config, {'best_metric': 4.0, 'patience_count': 2})
  assert resumed.should_stop
  assert not train._early_stopping(TrainConfig(patience=5), {'best_metric': 4.0,
                                                             'patience_count': 2}).should_stop


def test_baselines_match_hand_counts():
  train_windows = data.make_windows([[1, 2, 2, 2, 3]], 1)  # labels 2 2 2 3
  valid_windows = data.make_windows([[5, 2, 3, 3]], 1)  # labels 2 3 3
  scores = metrics.baselines(train_windows, valid_windows, vocab_size=6)
  assert scores['most_frequent_accuracy'] == pytest.approx(1 / 3)
  assert scores['unigram_accuracy'] == pytest.approx((0.75 + 2 * 0.25) / 3)
  smoothed = {2: 4 / 10, 3: 2 / 10}  # add-one over 6 ids
  assert scores['unigram_loss'] == pytest.approx(
      -(np.log(smoothed[2]) + 2 * np.log(smoothed[3])) / 3)


def test_a_checkpoint_of_another_model_is_refused_naming_what_differs(trained, tmp_path):
  workdir, _ = trained
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  config = json.loads((copy / checkpoints.CONFIG).read_text())
  (copy / checkpoints.CONFIG).write_text(json.dumps(config | {'rnn_units': 12}))
  with pytest.raises(UserError, match=r'lstm_0/recurrent_kernel is \[8, 32\] in the checkpoint, '
                                      r'\[12, 48\] in the config'):
    train.load(copy)
