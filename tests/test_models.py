"""Tests for rnn_jax.models: the LSTM layer against a NumPy reference, and WordLSTM."""

import functools
import itertools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax.configs import ModelConfig
from rnn_jax.models import LSTM, WordLSTM, affine, lstm_cell

BATCH, TIME, FEATURES, UNITS = 2, 5, 3, 4
VOCAB = 11
TOKENS = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], np.int32)


def reference_lstm(x, kernel, recurrent_kernel, bias, mask=None, reverse=False,
                   input_mask=None, recurrent_mask=None):
  """Keras' LSTM equations in NumPy, one step at a time.

  Returns (c, h, outputs) with outputs[:, t] the h after reading position t.
  """
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  batch, time, _ = x.shape
  units = recurrent_kernel.shape[0]
  c = h = np.zeros((batch, units))
  outputs = [None] * time
  for t in (reversed(range(time)) if reverse else range(time)):
    x_t = x[:, t] if input_mask is None else x[:, t] * input_mask
    h_in = h if recurrent_mask is None else h * recurrent_mask
    z = x_t @ kernel + h_in @ recurrent_kernel + bias
    i, f = sigmoid(z[:, :units]), sigmoid(z[:, units:2 * units])
    g, o = np.tanh(z[:, 2 * units:3 * units]), sigmoid(z[:, 3 * units:])
    new_c = f * c + i * g
    new_h = o * np.tanh(new_c)
    if mask is not None:
      new_c = np.where(mask[:, t, None], new_c, c)
      new_h = np.where(mask[:, t, None], new_h, h)
    c, h = new_c, new_h
    outputs[t] = h
  return c, h, np.stack(outputs, axis=1)


# Jitted with the module static so each (module, shapes) compiles once: eager
# calls would recompile the scan on every apply.
@functools.partial(jax.jit, static_argnames=('module', 'deterministic', 'capture_intermediates'))
def apply(module, variables, *args, deterministic=True, rngs=None, capture_intermediates=False):
  return module.apply(variables, *args, deterministic=deterministic, rngs=rngs,
                      capture_intermediates=capture_intermediates)


@functools.partial(jax.jit, static_argnames='module')
def init(module, key, inputs):
  return module.init(key, inputs, deterministic=True)


def random_inputs(seed=0, batch=BATCH, time=TIME):
  return np.random.default_rng(seed).standard_normal((batch, time, FEATURES)).astype(np.float32)


@functools.cache
def lstm_variables():
  """LSTM variables with a noisy bias so every gate term is exercised.

  Cached because compiling init dominates the run time, and the parameters do not
  depend on reverse, return_sequences or the dropout rates.
  """
  params = init(LSTM(UNITS), jax.random.key(1), random_inputs())['params']
  noise = 0.5 * np.random.default_rng(2).standard_normal(4 * UNITS).astype(np.float32)
  return {'params': {**params, 'bias': params['bias'] + noise}}


def numpy_params():
  return {k: np.asarray(v, np.float64) for k, v in lstm_variables()['params'].items()}


@pytest.mark.parametrize('return_sequences,reverse',
                         list(itertools.product([False, True], [False, True])))
def test_lstm_matches_reference(return_sequences, reverse):
  x = random_inputs()
  layer = LSTM(UNITS, reverse=reverse, return_sequences=return_sequences)
  (c, h), outputs = apply(layer, lstm_variables(), x)

  p = numpy_params()
  ref_c, ref_h, ref_outputs = reference_lstm(
      x.astype(np.float64), p['kernel'], p['recurrent_kernel'], p['bias'], reverse=reverse)
  np.testing.assert_allclose(c, ref_c, atol=1e-5)
  np.testing.assert_allclose(h, ref_h, atol=1e-5)
  np.testing.assert_allclose(outputs, ref_outputs if return_sequences else ref_h, atol=1e-5)


def test_lstm_with_mask_matches_reference():
  x = random_inputs()
  mask = np.array([[0, 1, 0, 1, 1], [1, 1, 1, 0, 0]], bool)
  (c, h), outputs = apply(LSTM(UNITS, return_sequences=True), lstm_variables(), x, mask)

  p = numpy_params()
  ref_c, ref_h, ref_outputs = reference_lstm(
      x.astype(np.float64), p['kernel'], p['recurrent_kernel'], p['bias'], mask)
  np.testing.assert_allclose(c, ref_c, atol=1e-5)
  np.testing.assert_allclose(h, ref_h, atol=1e-5)
  np.testing.assert_allclose(outputs, ref_outputs, atol=1e-5)


def test_lstm_gradients_match_finite_differences():
  x = random_inputs()
  mask = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], bool)
  weights = np.random.default_rng(3).standard_normal((BATCH, TIME, UNITS)).astype(np.float32)
  layer = LSTM(UNITS, return_sequences=True)

  def loss(params, x):
    (c, _), outputs = layer.apply({'params': params}, x, mask, deterministic=True)
    return jnp.sum(weights * outputs) + jnp.sum(c ** 2)

  def reference_loss(args):
    c, _, outputs = reference_lstm(args['x'], args['kernel'], args['recurrent_kernel'],
                                   args['bias'], mask)
    return np.sum(weights * outputs) + np.sum(c ** 2)

  param_grads, x_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(lstm_variables()['params'], x)
  grads = {**param_grads, 'x': x_grad}
  args = {**numpy_params(), 'x': x.astype(np.float64)}
  eps = 1e-6
  for name, value in args.items():
    numeric = np.zeros_like(value)
    for index in np.ndindex(value.shape):
      up, down = value.copy(), value.copy()
      up[index] += eps
      down[index] -= eps
      numeric[index] = (reference_loss({**args, name: up}) -
                        reference_loss({**args, name: down})) / (2 * eps)
    np.testing.assert_allclose(grads[name], numeric, rtol=1e-4, atol=1e-5, err_msg=name)
  assert not x_grad[0, 2].any() and x_grad[0, 1].any()  # masked inputs get no gradient


def test_masked_steps_are_skipped():
  x = random_inputs(batch=1, time=6)
  keep = np.array([False, True, True, False, False, True])
  layer = LSTM(UNITS, return_sequences=True)
  (c, h), outputs = apply(layer, lstm_variables(), x, keep[None])
  (short_c, short_h), _ = apply(layer, lstm_variables(), x[:, keep])

  np.testing.assert_allclose(c, short_c, atol=1e-6)
  np.testing.assert_allclose(h, short_h, atol=1e-6)
  np.testing.assert_array_equal(outputs[:, 0], 0.0)  # nothing read yet: the zero state
  for t in np.flatnonzero(~keep)[1:]:
    np.testing.assert_array_equal(outputs[:, t], outputs[:, t - 1])


def test_reverse_equals_forward_on_flipped_inputs():
  x = random_inputs()
  forward = LSTM(UNITS, return_sequences=True)
  backward = LSTM(UNITS, return_sequences=True, reverse=True)
  (c, h), outputs = apply(backward, lstm_variables(), x)
  (flip_c, flip_h), flip_outputs = apply(forward, lstm_variables(), x[:, ::-1])

  np.testing.assert_allclose(c, flip_c, atol=1e-6)
  np.testing.assert_allclose(h, flip_h, atol=1e-6)
  np.testing.assert_allclose(outputs, flip_outputs[:, ::-1], atol=1e-6)


def test_cell_steps_from_initial_state_match_scan():
  x = random_inputs()
  layer = LSTM(UNITS, return_sequences=True)
  p = lstm_variables()['params']
  start = (jnp.full((BATCH, UNITS), 0.3), jnp.full((BATCH, UNITS), -0.2))
  _, outputs = apply(layer, lstm_variables(), x, None, start)

  carry = start
  for t in range(TIME):
    carry = lstm_cell(carry, x[:, t] @ p['kernel'] + p['bias'], p['recurrent_kernel'])
    np.testing.assert_allclose(carry[1], outputs[:, t], atol=1e-6)
  c, h = layer.initial_state(BATCH)
  assert c.shape == h.shape == (BATCH, UNITS) and not c.any() and not h.any()


DROPOUT_LAYER = LSTM(UNITS, dropout=0.5, recurrent_dropout=0.5, return_sequences=True)


def test_deterministic_ignores_dropout():
  x = random_inputs()
  _, plain = apply(LSTM(UNITS, return_sequences=True), lstm_variables(), x)
  _, without_rng = apply(DROPOUT_LAYER, lstm_variables(), x)
  _, with_rng = apply(DROPOUT_LAYER, lstm_variables(), x, rngs={'dropout': jax.random.key(3)})
  np.testing.assert_array_equal(without_rng, plain)
  np.testing.assert_array_equal(with_rng, plain)


def test_dropout_depends_only_on_the_key():
  x = random_inputs()
  run = lambda seed: apply(DROPOUT_LAYER, lstm_variables(), x, deterministic=False,
                           rngs={'dropout': jax.random.key(seed)})[1]
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))


def test_dropout_masks_are_shared_over_time():
  """Each dropped sequence equals the reference under exactly one pair of constant masks."""
  keep = 1 - DROPOUT_LAYER.dropout
  x = random_inputs()
  _, outputs = apply(DROPOUT_LAYER, lstm_variables(), x, deterministic=False,
                     rngs={'dropout': jax.random.key(5)})

  p = numpy_params()
  dropped_any = False
  for b in range(BATCH):
    matches = []
    for bits in itertools.product([0, 1], repeat=FEATURES + UNITS):
      masks = np.array(bits) / keep
      *_, ref = reference_lstm(x[b:b + 1].astype(np.float64), p['kernel'],
                               p['recurrent_kernel'], p['bias'],
                               input_mask=masks[:FEATURES], recurrent_mask=masks[FEATURES:])
      if np.allclose(ref[0], outputs[b], atol=1e-5):
        matches.append(bits)
    assert len(matches) == 1, f'sequence {b}: {len(matches)} matching mask pairs'
    dropped_any |= 0 in matches[0]
  assert dropped_any  # the key must drop something for the check to mean anything


def test_initialisation():
  params = init(LSTM(UNITS), jax.random.key(0), random_inputs())['params']
  assert params['kernel'].shape == (FEATURES, 4 * UNITS)
  assert params['recurrent_kernel'].shape == (UNITS, 4 * UNITS)
  expected_bias = np.zeros(4 * UNITS)
  expected_bias[UNITS:2 * UNITS] = 1.0
  np.testing.assert_array_equal(params['bias'], expected_bias)
  recurrent = np.asarray(params['recurrent_kernel'])
  np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(UNITS), atol=1e-5)


def count_params(config, vocab_size=16192):
  """Parameter count per top-level module, without allocating the parameters."""
  tokens = jax.ShapeDtypeStruct((1, 50), jnp.int32)
  shapes = jax.eval_shape(init, WordLSTM(config, vocab_size), jax.random.key(0), tokens)
  return {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
          for name, tree in shapes['params'].items()}


@pytest.mark.parametrize('overrides,expected', [
    ({}, {'embed': 1_619_200, 'lstm_0': 42_240, 'dense': 8_320, 'logits': 2_088_768}),
    ({'lstm_layers': 2}, {'embed': 1_619_200, 'lstm_0': 42_240, 'lstm_1': 33_024,
                          'dense': 8_320, 'logits': 2_088_768}),
    ({'bidirectional': True}, {'embed': 1_619_200, 'lstm_0': 42_240,
                               'lstm_0_reverse': 42_240, 'dense': 16_512,
                               'logits': 2_088_768}),
])
def test_parameter_counts_match_keras(overrides, expected):
  assert count_params(ModelConfig(**overrides)) == expected


def small_model(**overrides):
  config = ModelConfig(embedding_dim=6, lstm_units=5, dense_units=7, **overrides)
  return WordLSTM(config, VOCAB)


@functools.cache
def word_lstm_variables(lstm_layers=1, bidirectional=False):
  """Cached: mask_zero and dropout rates do not change the parameters.

  Eager rather than jitted: the models share initialiser shapes, and eager init
  reuses their compiled kernels.
  """
  model = small_model(lstm_layers=lstm_layers, bidirectional=bidirectional)
  return model.init(jax.random.key(0), TOKENS, deterministic=True)


@pytest.mark.parametrize('overrides', [{}, {'lstm_layers': 2}, {'bidirectional': True}])
def test_left_padding_is_ignored_with_mask_zero(overrides):
  model = small_model(mask_zero=True, **overrides)
  variables = word_lstm_variables(**overrides)
  logits = apply(model, variables, TOKENS)
  padded_logits = apply(model, variables, np.pad(TOKENS, ((0, 0), (3, 0))))
  assert logits.shape == (2, VOCAB)
  np.testing.assert_allclose(padded_logits, logits, atol=1e-6)


def test_bidirectional_reads_both_ends():
  """The dense layer sees [forward h, backward h], the latter from a reversed read."""
  model = small_model(bidirectional=True)
  variables = word_lstm_variables(bidirectional=True)
  logits, state = apply(model, variables, TOKENS, capture_intermediates=True)
  p = variables['params']
  captured = state['intermediates']
  forward_h = captured['lstm_0']['__call__'][0][1]
  backward_h = captured['lstm_0_reverse']['__call__'][0][1]

  x = np.asarray(p['embed']['embedding'], np.float64)[TOKENS]
  for name, h, x_read in (('lstm_0', forward_h, x), ('lstm_0_reverse', backward_h, x[:, ::-1])):
    q = {k: np.asarray(v, np.float64) for k, v in p[name].items()}
    _, ref_h, _ = reference_lstm(x_read, q['kernel'], q['recurrent_kernel'], q['bias'])
    np.testing.assert_allclose(h, ref_h, atol=1e-5, err_msg=name)

  hidden = jnp.concatenate([forward_h, backward_h], -1) @ p['dense']['kernel'] + p['dense']['bias']
  expected = jax.nn.relu(hidden) @ p['logits']['kernel'] + p['logits']['bias']
  np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_stacked_model_runs_with_dropout():
  model = small_model(lstm_layers=2)
  variables = word_lstm_variables(lstm_layers=2)
  assert set(variables['params']) == {'embed', 'lstm_0', 'lstm_1', 'dense', 'logits'}
  logits = apply(model, variables, TOKENS, deterministic=False,
                 rngs={'dropout': jax.random.key(1)})
  assert logits.shape == (2, VOCAB) and np.isfinite(logits).all()
  assert not np.allclose(logits, apply(model, variables, TOKENS))


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
  models = [WordLSTM(ModelConfig(embedding_dim=16, lstm_units=8, dense_units=16,
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
