"""The AWD-LSTM levers: weight drop, AR/TAR, averaged weights, a learning rate cut on plateaus."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax import train
from rnn_jax.configs import TrainConfig
from rnn_jax.model import cells
from rnn_jax.model.layers import RNN
from rnn_jax.training import optimizer
from rnn_jax.training import regularization

from conftest import read_metrics, tiny_config

UNITS, FEATURES = 6, 3


@pytest.mark.parametrize('name', sorted(cells.CELLS))
def test_weight_drop_drops_the_recurrent_weights_once_per_batch(name):
  layer = RNN(cells.CELLS[name](UNITS), weight_drop=0.5, return_sequences=True)
  x = np.repeat(np.random.default_rng(0).standard_normal((1, 7, FEATURES), np.float32), 4, 0)
  variables = layer.init(jax.random.key(0), x, deterministic=True)
  params = variables['params']
  dropped = layer.apply(variables, params, jax.random.key(1), method=RNN._drop_weights)
  for key, value in params.items():
    if key in layer.cell.recurrent_weights:
      kept = np.asarray(dropped[key]) != 0
      np.testing.assert_allclose(np.asarray(dropped[key])[kept], 2 * np.asarray(value)[kept],
                                 rtol=1e-6)
      assert 0.3 < 1 - kept.mean() < 0.7
    else:
      np.testing.assert_array_equal(dropped[key], value)
  _, plain = layer.apply(variables, x, deterministic=True)
  _, outputs = layer.apply(variables, x, deterministic=False, rngs={'dropout': jax.random.key(2)})
  # One mask for the batch: equal sequences stay equal, unlike under recurrent dropout.
  np.testing.assert_allclose(outputs, np.broadcast_to(outputs[:1], outputs.shape), atol=1e-6)
  assert not np.allclose(outputs, plain, atol=1e-3)
  # The first step reads h = 0: the recurrent weights cannot change it.
  np.testing.assert_allclose(outputs[:, 0], plain[:, 0], atol=1e-6)


def test_activation_penalty_matches_numpy():
  rng = np.random.default_rng(0)
  hidden = rng.standard_normal((5, 3, 4)).astype(np.float32)
  mask = rng.random((5, 3)) < 0.7
  config = TrainConfig(activation_reg=2.0, temporal_activation_reg=0.5)
  squares = [hidden[t, b] ** 2 for t in range(5) for b in range(3) if mask[t, b]]
  changes = [(hidden[t, b] - hidden[t - 1, b]) ** 2 for t in range(1, 5) for b in range(3)
             if mask[t, b] and mask[t - 1, b]]
  expected = 2.0 * np.mean(squares) + 0.5 * np.mean(changes)
  got = regularization.activation_penalty(jnp.asarray(hidden), jnp.asarray(mask), config)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def one_step(corpus, **train_fields):
  config = tiny_config(corpus, **train_fields)
  state = train.create_train_state(config, 9)
  features = np.random.default_rng(0).integers(1, 9, (8, 4)).astype(np.int32)
  batch = (features, np.roll(features, -1, 1), np.ones((8, 4), np.float32))
  return jax.jit(lambda s, b: train.train_step(s, b, jax.random.key(0), config=config.train))(
      state, batch)


def test_activation_penalties_change_the_gradient_but_not_the_measured_loss(corpus):
  plain_state, plain = one_step(corpus)
  state, sums = one_step(corpus, activation_reg=2.0, temporal_activation_reg=1.0)
  np.testing.assert_allclose(sums['loss'], plain['loss'], rtol=1e-6)
  assert not np.allclose(state.params['lstm_0']['kernel'], plain_state.params['lstm_0']['kernel'])


def test_the_average_follows_its_recurrence_and_the_params_are_adams():
  config = TrainConfig(learning_rate=0.05, average_decay=0.9)
  params = {'w': jnp.arange(3.0)}
  averaged = optimizer.create(None, params, config, True)
  plain = optimizer.create(None, params, dataclasses.replace(config, average_decay=0.0), True)
  expected = np.arange(3.0)
  for step in range(30):
    grads = {'w': jnp.sin(averaged.params['w'] + step)}
    averaged, plain = (s.apply_gradients(grads=grads) for s in (averaged, plain))
    decay = min(0.9, (1 + step) / (10 + step))
    expected = decay * expected + (1 - decay) * np.asarray(averaged.params['w'])
  np.testing.assert_array_equal(averaged.params['w'], plain.params['w'])
  np.testing.assert_allclose(averaged.average['w'], expected, rtol=1e-5)
  assert not np.allclose(expected, averaged.params['w'], atol=1e-3)
  np.testing.assert_array_equal(optimizer.for_evaluation(averaged).params['w'],
                                averaged.average['w'])


@pytest.mark.heavy
def test_a_run_scores_samples_and_resumes_with_its_average(corpus, tmp_path):
  config = tiny_config(corpus, average_decay=0.95, max_epochs=2, checkpoint_every_steps=1)
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  # The same run stopped after epoch 1 and resumed: the average goes on where it was.
  train.train_and_evaluate(dataclasses.replace(
      config, train=dataclasses.replace(config.train, max_epochs=1)), tmp_path / 'resumed')
  resumed = train.train_and_evaluate(config, tmp_path / 'resumed', resume=True)
  assert resumed == straight
  _, _, model, average = train.load(tmp_path / 'resumed')
  _, _, _, same = train.load(tmp_path / 'straight')
  jax.tree.map(np.testing.assert_array_equal, average, same)
  records = read_metrics(tmp_path / 'straight')
  best = min(records, key=lambda r: r['val_loss'])
  assert straight['valid']['loss'] == pytest.approx(best['val_loss'], rel=1e-6)


def test_cutting_the_learning_rate_scales_the_next_adam_step():
  config = TrainConfig(learning_rate=0.1, lr_plateau_factor=0.25)
  state = optimizer.create(None, {'w': jnp.zeros(2)}, config, True)
  assert optimizer.learning_rate(state) == pytest.approx(0.1)
  grads = {'w': jnp.array([1.0, -2.0])}
  full = state.apply_gradients(grads=grads).params['w']
  cut = optimizer.cut_learning_rate(state, 0.25)
  assert optimizer.learning_rate(cut) == pytest.approx(0.025)
  np.testing.assert_allclose(cut.apply_gradients(grads=grads).params['w'], full * 0.25, rtol=1e-6)
  # Without the option, the optimizer state is what runs saved before it existed hold.
  plain = optimizer.make_optimizer(TrainConfig(), True).init({'w': jnp.zeros(2)})
  assert isinstance(plain[0], optax.ScaleByAdamState)


def test_a_run_cuts_its_rate_after_each_epoch_without_improvement(corpus, tmp_path):
  # An improvement must be 0.05 nats: late epochs fall short.
  config = tiny_config(corpus, lr_plateau_factor=0.5, max_epochs=5, patience=5, min_delta=0.05)
  train.train_and_evaluate(config, tmp_path)
  records = read_metrics(tmp_path)
  best, cuts = np.inf, 0
  for record, following in zip(records, records[1:]):
    improved = best - record['val_loss'] > 0.05
    best = record['val_loss'] if improved else best
    assert following['learning_rate'] == pytest.approx(
        record['learning_rate'] * (1 if improved else 0.5))
    cuts += not improved
  assert records[0]['learning_rate'] == pytest.approx(0.03) and cuts
  assert json.loads((tmp_path / 'config.json').read_text())['lr_plateau_factor'] == 0.5
