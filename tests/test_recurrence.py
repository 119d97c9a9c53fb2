"""The hand-written LSTM recurrence and its gradient against plain autodiff of a plain scan."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import recurrence
from rnn_jax.configs import ModelConfig
from rnn_jax.models import LSTM, WordLSTM

TIME, BATCH, UNITS = 6, 3, 4
ROWS = 10  # input projections the steps pick from


def plain_lstm(rows, ids, recurrent_kernel, bias, recurrent_mask, step_mask, c0, h0, reverse):
  """Keras' equations with sigmoids, a masked lax.scan, and autodiff for the gradient."""
  gates_x = jnp.swapaxes(rows, 0, 1) if ids is None else rows[ids]

  def step(carry, xs):
    c, h = carry
    gates_x_t, read = xs
    z = gates_x_t + bias + (h * recurrent_mask) @ recurrent_kernel
    i, f, g, o = jnp.split(z, 4, axis=-1)
    new_c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    new_h = nn.sigmoid(o) * jnp.tanh(new_c)
    new_c, new_h = jnp.where(read > 0, new_c, c), jnp.where(read > 0, new_h, h)
    return (new_c, new_h), new_h

  return jax.lax.scan(step, (c0, h0), (gates_x, step_mask), reverse=reverse)


def random_arguments(seed: int, masked: bool, dropout: bool, by_id: bool = True):
  """The recurrence's arguments; `by_id`: steps pick rows of a table, else each step has its
  own row of f32[batch, time, 4 * units]."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  step_mask = rng.random((TIME, BATCH, 1)) < (0.7 if masked else 1.1)
  recurrent_mask = (rng.random((BATCH, UNITS)) < 0.8) / 0.8 if dropout else np.ones((BATCH, UNITS))
  # Fewer rows than steps: some rows are read by several steps, and their gradients add up.
  ids = jnp.asarray(rng.integers(0, ROWS, (TIME, BATCH)), jnp.int32)
  rows = normal(ROWS, 4 * UNITS) if by_id else normal(BATCH, TIME, 4 * UNITS)
  return (rows, ids if by_id else None, 0.5 * normal(UNITS, 4 * UNITS), normal(4 * UNITS),
          jnp.asarray(recurrent_mask, jnp.float32), jnp.asarray(step_mask, jnp.float32),
          normal(BATCH, UNITS), normal(BATCH, UNITS))


def weighted_loss(lstm, weights, *args, reverse):
  """A loss that reaches every output and the final state, with unequal weights."""
  (c, h), hs = lstm(*args, reverse)
  return jnp.sum(weights * hs) + jnp.sum(jnp.sin(c)) + jnp.sum(h ** 2)


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('dropout', [False, True])
@pytest.mark.parametrize('by_id', [True, False])
def test_values_and_gradients_equal_autodiff_of_a_plain_scan(reverse, masked, dropout, by_id):
  args = random_arguments(seed=int(reverse) + 2 * masked + 4 * dropout, masked=masked,
                          dropout=dropout, by_id=by_id)
  weights = jnp.asarray(np.random.default_rng(9).standard_normal((TIME, BATCH, UNITS)),
                        jnp.float32)
  (c, h), hs = recurrence.lstm(*args, reverse)
  (plain_c, plain_h), plain_hs = plain_lstm(*args, reverse)
  np.testing.assert_allclose(hs, plain_hs, atol=2e-6)
  np.testing.assert_allclose(c, plain_c, atol=2e-6)
  np.testing.assert_allclose(h, plain_h, atol=2e-6)
  differentiable = (0, 2, 3, 6, 7)  # rows, kernel, bias, c0, h0; not the ids or masks
  grads = jax.grad(functools.partial(weighted_loss, recurrence.lstm, weights, reverse=reverse),
                   argnums=differentiable)(*args)
  plain_grads = jax.grad(functools.partial(weighted_loss, plain_lstm, weights, reverse=reverse),
                         argnums=differentiable)(*args)
  for name, grad, plain_grad in zip(['rows', 'kernel', 'bias', 'c0', 'h0'], grads,
                                    plain_grads):
    np.testing.assert_allclose(grad, plain_grad, rtol=1e-5, atol=1e-5, err_msg=name)
  if masked and by_id:  # skipped steps pass the state's gradient through and get none
    read_rows = np.unique(np.asarray(args[1])[np.asarray(args[5][..., 0]) > 0])
    unread = np.setdiff1d(np.arange(ROWS), read_rows)
    assert not np.asarray(grads[0])[unread].any()
  if masked and not by_id:
    skipped = np.asarray(args[5][..., 0]).T == 0  # [batch, time]
    assert not np.asarray(grads[0])[skipped].any()


def test_masks_get_no_gradient():
  args = random_arguments(seed=0, masked=True, dropout=True)
  grads = jax.grad(lambda *a: jnp.sum(recurrence.lstm(*a, False)[1]), argnums=(4, 5))(*args)
  assert not any(np.asarray(g).any() for g in grads)


@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_reading_rows_of_a_table_equals_reading_gathered_inputs(dropout):
  """The `ids` path (each table row projected once) against the inputs it stands for."""
  rng = np.random.default_rng(4)
  # Fewer rows than steps, so the layer projects the table rather than the gathered rows.
  table = jnp.asarray(rng.standard_normal((BATCH * TIME - 6, 5)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, len(table), (BATCH, TIME)), jnp.int32)
  layer = LSTM(UNITS, dropout=dropout, recurrent_dropout=dropout)
  params = layer.init(jax.random.key(0), table[ids], deterministic=True)['params']
  rngs = {'dropout': jax.random.key(1)}

  def loss(params, table, use_ids):
    inputs = table if use_ids else table[ids]
    (c, _), h = layer.apply({'params': params}, inputs, ids=ids if use_ids else None,
                            deterministic=False, rngs=rngs)
    return jnp.sum(h * jnp.arange(UNITS)) + jnp.sum(c ** 2)

  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(params, table, True)
  expected_value, expected_grads = jax.value_and_grad(loss, argnums=(0, 1))(params, table, False)
  np.testing.assert_allclose(value, expected_value, rtol=1e-6)
  for grad, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_word_lstm_equals_its_layers_run_by_hand():
  """WordLSTM's time-major, table-reading path against embedding, layer and heads by hand."""
  config = ModelConfig(embedding_dim=6, lstm_units=UNITS, lstm_layers=2, dense_units=7,
                       mask_zero=True)
  model = WordLSTM(config, 30)
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 30, (BATCH, TIME)), jnp.int32)
  params = model.init(jax.random.key(2), tokens, deterministic=True)['params']
  logits = model.apply({'params': params}, tokens, deterministic=True)

  x, mask = params['embed']['embedding'][tokens], tokens != 0
  for i in range(2):
    layer = LSTM(UNITS, return_sequences=i == 0)
    _, x = layer.apply({'params': params[f'lstm_{i}']}, x, mask, deterministic=True)
  hidden = nn.relu(x @ params['dense']['kernel'] + params['dense']['bias'])
  expected = hidden @ params['logits']['kernel'] + params['logits']['bias']
  np.testing.assert_allclose(logits, expected, atol=1e-5)
