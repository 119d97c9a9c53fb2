"""WordRNN for every registered cell: its layers by hand, padding, both directions, bf16."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax.configs import ModelConfig
from rnn_jax.model import cells
from rnn_jax.model.layers import RNN, affine
from rnn_jax.model.word_rnn import WordRNN

BATCH, TIME, FEATURES, UNITS = 2, 5, 3, 4
VOCAB = 11
TOKENS = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], np.int32)


# Jitted with the module static so each (module, shapes) compiles once: eager
# calls would recompile the scan on every apply.
@functools.partial(jax.jit, static_argnames=('module', 'deterministic', 'capture_intermediates'))
def apply(module, variables, *args, deterministic=True, rngs=None, capture_intermediates=False):
  return module.apply(variables, *args, deterministic=deterministic, rngs=rngs,
                      capture_intermediates=capture_intermediates)


@functools.partial(jax.jit, static_argnames='module')
def init(module, key, inputs):
  return module.init(key, inputs, deterministic=True)


def count_params(config, vocab_size=16192):
  """Parameter count per top-level module, without allocating the parameters."""
  tokens = jax.ShapeDtypeStruct((1, 50), jnp.int32)
  shapes = jax.eval_shape(init, WordRNN(config, vocab_size), jax.random.key(0), tokens)
  return {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
          for name, tree in shapes['params'].items()}


# Keras' model.summary() for the walkthrough's model (vocabulary 16,192, 100-d embeddings, 64
# units, Dense 128) and its variants; GRU(64) on 100 inputs: 3 * (100 * 64 + 64 * 64 + 2 * 64).
@pytest.mark.parametrize('overrides,expected', [
    ({}, {'embed': 1_619_200, 'lstm_0': 42_240, 'dense': 8_320, 'logits': 2_088_768}),
    ({'rnn_layers': 2}, {'embed': 1_619_200, 'lstm_0': 42_240, 'lstm_1': 33_024,
                         'dense': 8_320, 'logits': 2_088_768}),
    ({'bidirectional': True}, {'embed': 1_619_200, 'lstm_0': 42_240,
                               'lstm_0_reverse': 42_240, 'dense': 16_512,
                               'logits': 2_088_768}),
    ({'cell': 'gru'}, {'embed': 1_619_200, 'gru_0': 31_872, 'dense': 8_320,
                       'logits': 2_088_768}),
    ({'cell': 'gru', 'rnn_layers': 2}, {'embed': 1_619_200, 'gru_0': 31_872, 'gru_1': 24_960,
                                        'dense': 8_320, 'logits': 2_088_768}),
])
def test_parameter_counts_match_keras(overrides, expected):
  assert count_params(ModelConfig(**overrides)) == expected


def small_model(cell, **overrides):
  config = ModelConfig(embedding_dim=6, cell=cell, rnn_units=5, dense_units=7, **overrides)
  return WordRNN(config, VOCAB)


@functools.cache
def model_variables(cell, rnn_layers=1, bidirectional=False):
  """Cached: mask_zero and dropout rates do not change the parameters."""
  model = small_model(cell, rnn_layers=rnn_layers, bidirectional=bidirectional)
  return init(model, jax.random.key(0), TOKENS)


CELL_NAMES = sorted(cells.CELLS)


@pytest.mark.parametrize('cell', CELL_NAMES)
def test_model_equals_its_layers_run_by_hand(cell):
  """WordRNN's time-major, table-reading path against embedding, layers and heads by hand."""
  model = small_model(cell, rnn_layers=2, mask_zero=True)
  tokens = np.pad(TOKENS, ((0, 0), (2, 0)))
  params = model_variables(cell, rnn_layers=2)['params']
  logits = apply(model, {'params': params}, tokens)

  x, mask = params['embed']['embedding'][tokens], tokens != 0
  for i in range(2):
    layer = RNN(cells.CELLS[cell](5), return_sequences=i == 0)
    _, x = layer.apply({'params': params[f'{cell}_{i}']}, x, mask, deterministic=True)
  hidden = nn.relu(x @ params['dense']['kernel'] + params['dense']['bias'])
  expected = hidden @ params['logits']['kernel'] + params['logits']['bias']
  np.testing.assert_allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize('cell', CELL_NAMES)
@pytest.mark.parametrize('overrides', [{'rnn_layers': 2, 'bidirectional': True}])
def test_left_padding_is_ignored_with_mask_zero(cell, overrides):
  model = small_model(cell, mask_zero=True, **overrides)
  variables = model_variables(cell, **overrides)
  logits = apply(model, variables, TOKENS)
  padded_logits = apply(model, variables, np.pad(TOKENS, ((0, 0), (3, 0))))
  assert logits.shape == (2, VOCAB)
  np.testing.assert_allclose(padded_logits, logits, atol=1e-6)


@pytest.mark.parametrize('cell', CELL_NAMES)
def test_bidirectional_reads_both_ends(cell):
  """The dense layer sees [forward h, backward h], the latter from a reversed read."""
  model = small_model(cell, bidirectional=True)
  variables = model_variables(cell, bidirectional=True)
  p = variables['params']
  logits = apply(model, variables, TOKENS)
  x = p['embed']['embedding'][TOKENS]
  run = lambda name, reverse: RNN(cells.CELLS[cell](5), reverse=reverse).apply(
      {'params': p[name]}, x, deterministic=True)[1]
  forward_h, backward_h = run(f'{cell}_0', False), run(f'{cell}_0_reverse', True)
  flipped_h = RNN(cells.CELLS[cell](5)).apply({'params': p[f'{cell}_0_reverse']}, x[:, ::-1],
                                              deterministic=True)[1]
  np.testing.assert_allclose(backward_h, flipped_h, atol=1e-6)
  hidden = jnp.concatenate([forward_h, backward_h], -1) @ p['dense']['kernel'] + p['dense']['bias']
  expected = jax.nn.relu(hidden) @ p['logits']['kernel'] + p['logits']['bias']
  np.testing.assert_allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize('cell', CELL_NAMES)
def test_stacked_model_runs_with_dropout(cell):
  model = small_model(cell, rnn_layers=2)
  variables = model_variables(cell, rnn_layers=2)
  assert set(variables['params']) == {'embed', f'{cell}_0', f'{cell}_1', 'dense', 'logits'}
  logits = apply(model, variables, TOKENS, deterministic=False,
                 rngs={'dropout': jax.random.key(1)})
  assert logits.shape == (2, VOCAB) and np.isfinite(logits).all()
  assert not np.allclose(logits, apply(model, variables, TOKENS))


@pytest.mark.parametrize('cell', CELL_NAMES)
@pytest.mark.parametrize('overrides', [{'rnn_layers': 2}, {'bidirectional': True}])
def test_read_and_predict_are_the_model_with_its_padding_skipped(cell, overrides):
  """Decoding's methods against the model itself: a padded read equals an unpadded one, and
  reading in two parts equals reading at once."""
  model = small_model(cell, **overrides)
  variables = model_variables(cell, **overrides)
  read = lambda tokens, state=None: model.apply(variables, tokens, state, method=WordRNN.read)
  predict = lambda state: model.apply(variables, state, method=WordRNN.predict)
  np.testing.assert_allclose(predict(read(TOKENS)), apply(model, variables, TOKENS), atol=1e-6)
  np.testing.assert_allclose(predict(read(np.pad(TOKENS, ((0, 0), (3, 0))))),
                             predict(read(TOKENS)), atol=1e-6)
  if not overrides.get('bidirectional'):
    np.testing.assert_allclose(predict(read(TOKENS[:, 3:], read(TOKENS[:, :3]))),
                               predict(read(TOKENS)), atol=1e-6)


def test_affine_equals_dense_in_values_and_gradients():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((3, 2, 5)), jnp.float32)
  dense = nn.Dense(7)
  params = dense.init(jax.random.key(0), x)['params']
  params['bias'] = jnp.asarray(rng.standard_normal(7), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((3, 2, 7)), jnp.float32)
  loss = lambda f, params, x: jnp.sum(weights * f(params, x) ** 2)
  with_affine = lambda params, x: affine(x, params['kernel'], params['bias'])
  with_dense = lambda params, x: dense.apply({'params': params}, x)
  np.testing.assert_allclose(with_affine(params, x), with_dense(params, x), atol=1e-6)
  grads = jax.grad(functools.partial(loss, with_affine), argnums=(0, 1))(params, x)
  expected = jax.grad(functools.partial(loss, with_dense), argnums=(0, 1))(params, x)
  for grad, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_matmuls_stay_close_to_float32():
  """bfloat16 operands (8 significant bits) with float32 sums: logits and gradients within a
  few percent of float32, parameters float32 either way."""
  tokens = jnp.asarray(np.random.default_rng(7).integers(1, VOCAB, (4, 6)), jnp.int32)
  labels = jnp.asarray(np.random.default_rng(8).integers(1, VOCAB, 4), jnp.int32)
  models = [WordRNN(ModelConfig(embedding_dim=16, rnn_units=8, dense_units=16,
                                 compute_dtype=dtype), VOCAB) for dtype in ('float32', 'bfloat16')]
  params = init(models[0], jax.random.key(3), tokens)['params']

  def loss(params, model):
    logits = model.apply({'params': params}, tokens, deterministic=True)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), logits

  (loss32, logits32), grads32 = jax.value_and_grad(loss, has_aux=True)(params, models[0])
  (loss16, logits16), grads16 = jax.value_and_grad(loss, has_aux=True)(params, models[1])
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits32, atol=0.02 * float(jnp.abs(logits32).max()))
  assert abs(float(loss16) - float(loss32)) < 0.01 * float(loss32)
  for g16, g32 in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
    assert g16.dtype == jnp.float32
    assert float(jnp.linalg.norm(g16 - g32)) <= 0.03 * float(jnp.linalg.norm(g32)) + 1e-6
