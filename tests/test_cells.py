"""Every registered cell, run by `layers.RNN`, against a NumPy step; fused paths against `scan`."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax.model import cells
from rnn_jax.model.cells import base
from rnn_jax.model.layers import RNN

BATCH, TIME, FEATURES, UNITS = 2, 5, 3, 4
sigmoid = lambda z: 1 / (1 + np.exp(-z))


def numpy_lstm(p, state, x_t, h_in):
  """Keras' LSTM: gates i, f, c, o."""
  c, h = state
  z = x_t @ p['kernel'] + h_in @ p['recurrent_kernel'] + p['bias']
  i, f, g, o = np.split(z, 4, axis=-1)
  c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
  return c, sigmoid(o) * np.tanh(c)


def numpy_gru(p, state, x_t, h_in):
  """Keras 3's GRU, reset_after=True: gates z, r, h; input and recurrent bias rows."""
  x_z, x_r, x_h = np.split(x_t @ p['kernel'] + p['bias'][0], 3, axis=-1)
  h_z, h_r, h_h = np.split(h_in @ p['recurrent_kernel'] + p['bias'][1], 3, axis=-1)
  z, r = sigmoid(x_z + h_z), sigmoid(x_r + h_r)
  return (z * state + (1 - z) * np.tanh(x_h + r * h_h),)


# A new cell needs its NumPy step here: (params, state as a tuple of arrays, x_t, h after
# recurrent dropout) -> the new state, in the cell's own layout.
NUMPY_STEPS = {'lstm': numpy_lstm, 'gru': numpy_gru}
NAMES = sorted(cells.CELLS)


def test_every_registered_cell_has_a_numpy_reference():
  assert set(NUMPY_STEPS) == set(cells.CELLS)


def reference(name, x, p, mask=None, reverse=False, input_mask=None, recurrent_mask=None):
  """The cell one step at a time in float64: (final state as a tuple, outputs[:, t] = h after
  reading position t)."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  batch, time, _ = x.shape
  state = tuple(np.zeros((batch, UNITS)) for _ in range(len(as_tuple(initial(name)))))
  outputs = [None] * time
  for t in (reversed(range(time)) if reverse else range(time)):
    x_t = x[:, t] if input_mask is None else x[:, t] * input_mask
    h = state[-1]
    new = NUMPY_STEPS[name](p, state if len(state) > 1 else state[0], x_t,
                            h if recurrent_mask is None else h * recurrent_mask)
    if mask is not None:
      new = tuple(np.where(mask[:, t, None], n, o) for n, o in zip(new, state))
    state = new
    outputs[t] = state[-1]
  return state, np.stack(outputs, axis=1)


def as_tuple(state):
  return state if isinstance(state, tuple) else (state,)


def initial(name):
  return cells.CELLS[name](UNITS).initial_state((BATCH,))


def random_inputs(seed=0, batch=BATCH, time=TIME):
  return np.random.default_rng(seed).standard_normal((batch, time, FEATURES)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=('module', 'deterministic'))
def apply(module, variables, *args, deterministic=True, rngs=None):
  return module.apply(variables, *args, deterministic=deterministic, rngs=rngs)


@functools.cache
def variables(name):
  """The cell's parameters with noisy biases, so that every bias term is exercised."""
  layer = RNN(cells.CELLS[name](UNITS))
  params = layer.init(jax.random.key(1), random_inputs(), deterministic=True)['params']
  noise = 0.5 * np.random.default_rng(2).standard_normal(params['bias'].shape)
  return {'params': {**params, 'bias': params['bias'] + noise.astype(np.float32)}}


def layer_of(name, **kwargs):
  return RNN(cells.CELLS[name](UNITS), **kwargs)


def check_state(name, state, ref_state):
  # The reference keeps the cell's layout, h last.
  for got, want in zip(as_tuple(state), ref_state, strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(cells.CELLS[name](UNITS).output(state), ref_state[-1], atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('return_sequences,reverse',
                         list(itertools.product([False, True], [False, True])))
def test_layer_matches_the_numpy_step(name, return_sequences, reverse):
  x = random_inputs()
  state, outputs = apply(layer_of(name, reverse=reverse, return_sequences=return_sequences),
                         variables(name), x)
  ref_state, ref_outputs = reference(name, x.astype(np.float64), variables(name)['params'],
                                     reverse=reverse)
  check_state(name, state, ref_state)
  np.testing.assert_allclose(outputs, ref_outputs if return_sequences else ref_state[-1],
                             atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_masked_layer_matches_the_numpy_step(name):
  x = random_inputs()
  mask = np.array([[0, 1, 0, 1, 1], [1, 1, 1, 0, 0]], bool)
  state, outputs = apply(layer_of(name, return_sequences=True), variables(name), x, mask)
  ref_state, ref_outputs = reference(name, x.astype(np.float64), variables(name)['params'], mask)
  check_state(name, state, ref_state)
  np.testing.assert_allclose(outputs, ref_outputs, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_gradients_match_finite_differences_of_the_numpy_step(name):
  x = random_inputs()
  mask = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], bool)
  weights = np.random.default_rng(3).standard_normal((BATCH, TIME, UNITS)).astype(np.float32)
  layer = layer_of(name, return_sequences=True)

  def loss(params, x):
    state, outputs = layer.apply({'params': params}, x, mask, deterministic=True)
    return jnp.sum(weights * outputs) + sum(jnp.sum(s ** 2) for s in as_tuple(state))

  def reference_loss(args):
    state, outputs = reference(name, args.pop('x'), args, mask)
    return np.sum(weights * outputs) + sum(np.sum(s ** 2) for s in state)

  param_grads, x_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables(name)['params'], x)
  grads = {**param_grads, 'x': x_grad}
  args = {**{k: np.asarray(v, np.float64) for k, v in variables(name)['params'].items()},
          'x': x.astype(np.float64)}
  eps = 1e-6
  for key, value in args.items():
    numeric = np.zeros_like(value)
    for index in np.ndindex(value.shape):
      up, down = value.copy(), value.copy()
      up[index] += eps
      down[index] -= eps
      numeric[index] = (reference_loss({**args, key: up}) -
                        reference_loss({**args, key: down})) / (2 * eps)
    np.testing.assert_allclose(grads[key], numeric, rtol=1e-4, atol=1e-5, err_msg=key)
  assert not x_grad[0, 2].any() and x_grad[0, 1].any()  # masked inputs get no gradient


@pytest.mark.parametrize('name', NAMES)
def test_masked_steps_are_skipped_and_reverse_reads_backwards(name):
  x = random_inputs(batch=1, time=6)
  keep = np.array([False, True, True, False, False, True])
  layer = layer_of(name, return_sequences=True)
  state, outputs = apply(layer, variables(name), x, keep[None])
  short_state, _ = apply(layer, variables(name), x[:, keep])
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(short_state)):
    np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_array_equal(outputs[:, 0], 0.0)  # nothing read yet: the zero state
  for t in np.flatnonzero(~keep)[1:]:
    np.testing.assert_array_equal(outputs[:, t], outputs[:, t - 1])

  backward = layer_of(name, return_sequences=True, reverse=True)
  _, back_outputs = apply(backward, variables(name), x)
  _, flip_outputs = apply(layer, variables(name), x[:, ::-1])
  np.testing.assert_allclose(back_outputs, flip_outputs[:, ::-1], atol=1e-6)


@pytest.mark.parametrize('name', NAMES)
def test_steps_from_a_given_state_match_the_scan(name):
  x = random_inputs()
  cell = cells.CELLS[name](UNITS)
  p = variables(name)['params']
  start = jax.tree.map(lambda z: z + 0.3, cell.initial_state((BATCH,)))
  _, outputs = apply(layer_of(name, return_sequences=True), variables(name), x, None, start)
  state, ones = start, jnp.ones((BATCH, UNITS))
  for t in range(TIME):
    state = cell.step(p, state, x[:, t] @ p['kernel'], ones)
    np.testing.assert_allclose(cell.output(state), outputs[:, t], atol=1e-6)
  assert not any(leaf.any() for leaf in jax.tree.leaves(cell.initial_state((BATCH,))))


@pytest.mark.parametrize('name', NAMES)
def test_dropout_masks_are_per_sequence_shared_over_time_and_off_when_deterministic(name):
  """Each dropped sequence equals the reference under exactly one pair of constant masks."""
  layer = layer_of(name, dropout=0.5, recurrent_dropout=0.5, return_sequences=True)
  x = random_inputs()
  _, plain = apply(layer_of(name, return_sequences=True), variables(name), x)
  _, deterministic = apply(layer, variables(name), x, rngs={'dropout': jax.random.key(3)})
  np.testing.assert_array_equal(deterministic, plain)
  _, outputs = apply(layer, variables(name), x, deterministic=False,
                     rngs={'dropout': jax.random.key(5)})
  _, again = apply(layer, variables(name), x, deterministic=False,
                   rngs={'dropout': jax.random.key(5)})
  np.testing.assert_array_equal(outputs, again)

  dropped_any = False
  for b in range(BATCH):
    matches = []
    for bits in itertools.product([0, 1], repeat=FEATURES + UNITS):
      masks = np.array(bits) / 0.5
      _, ref = reference(name, x[b:b + 1].astype(np.float64), variables(name)['params'],
                         input_mask=masks[:FEATURES], recurrent_mask=masks[FEATURES:])
      if np.allclose(ref[0], outputs[b], atol=1e-5):
        matches.append(bits)
    assert len(matches) == 1, f'sequence {b}: {len(matches)} matching mask pairs'
    dropped_any |= 0 in matches[0]
  assert dropped_any  # the key must drop something for the check to mean anything


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_reading_rows_of_a_table_equals_reading_gathered_inputs(name, dropout):
  """The `ids` path (each table row projected once) against the inputs it stands for."""
  rng = np.random.default_rng(4)
  # Fewer rows than steps, so the layer projects the table rather than the gathered rows.
  table = jnp.asarray(rng.standard_normal((BATCH * TIME - 6, FEATURES)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, len(table), (BATCH, TIME)), jnp.int32)
  layer = layer_of(name, dropout=dropout, recurrent_dropout=dropout)
  rngs = {'dropout': jax.random.key(1)}

  def loss(params, table, use_ids):
    inputs = table if use_ids else table[ids]
    state, h = layer.apply({'params': params}, inputs, ids=ids if use_ids else None,
                           deterministic=False, rngs=rngs)
    return jnp.sum(h * jnp.arange(UNITS)) + sum(jnp.sum(s ** 2) for s in jax.tree.leaves(state))

  params = variables(name)['params']
  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(params, table, True)
  expected_value, expected_grads = jax.value_and_grad(loss, argnums=(0, 1))(params, table, False)
  np.testing.assert_allclose(value, expected_value, rtol=1e-6)
  for grad, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', NAMES)
def test_initialisation_is_keras(name):
  params = variables(name)['params']
  width = cells.CELLS[name](UNITS).width
  assert params['kernel'].shape == (FEATURES, width)
  assert params['recurrent_kernel'].shape == (UNITS, width)
  fresh = RNN(cells.CELLS[name](UNITS)).init(jax.random.key(0), random_inputs(),
                                             deterministic=True)['params']
  recurrent = np.asarray(fresh['recurrent_kernel'])
  np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(UNITS), atol=1e-5)
  expected_bias = {'lstm': np.zeros(4 * UNITS), 'gru': np.zeros((2, 3 * UNITS))}.get(name)
  if name == 'lstm':
    expected_bias[UNITS:2 * UNITS] = 1.0  # unit_forget_bias
  if expected_bias is not None:
    np.testing.assert_array_equal(fresh['bias'], expected_bias)


# The fused fast paths, each against the generic scan over the same cell's step.
FUSED = [name for name in NAMES if type(cells.CELLS[name](UNITS)).run is not base.Cell.run]
ROWS = 10  # input projections the steps pick from


def random_arguments(cell, seed: int, masked: bool, dropout: bool, by_id: bool):
  """`run`'s arguments; `by_id`: steps pick rows of a table (fewer rows than steps, so some are
  read by several steps and their gradients add up), else each step has its own row."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  params = jax.tree.map(lambda p: 0.5 * normal(*p.shape), cell.create_params(
      lambda _, init, shape: init(jax.random.key(0), shape), FEATURES))
  rows = normal(ROWS, cell.width) if by_id else normal(BATCH, TIME, cell.width)
  ids = jnp.asarray(rng.integers(0, ROWS, (TIME, BATCH)), jnp.int32) if by_id else None
  recurrent_mask = (rng.random((BATCH, UNITS)) < 0.8) / 0.8 if dropout else np.ones((BATCH, UNITS))
  step_mask = rng.random((TIME, BATCH, 1)) < (0.7 if masked else 1.1)
  state = jax.tree.map(lambda z: normal(*z.shape), cell.initial_state((BATCH,)))
  return (params, rows, ids, jnp.asarray(recurrent_mask, jnp.float32),
          jnp.asarray(step_mask, jnp.float32), state)


def weighted_loss(run, weights, params, rows, ids, recurrent_mask, step_mask, state, reverse):
  """A loss that reaches every output and the final state, with unequal weights."""
  state, hs = run(params, rows, ids, recurrent_mask, step_mask, state, reverse)
  return jnp.sum(weights * hs) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(state))


@pytest.mark.parametrize('name', FUSED)
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('masked,dropout', [(False, False), (True, True)])
@pytest.mark.parametrize('by_id', [True, False])
def test_fused_path_equals_the_generic_scan(name, reverse, masked, dropout, by_id):
  cell = cells.CELLS[name](UNITS)
  args = random_arguments(cell, int(reverse) + 2 * masked + 4 * dropout, masked, dropout, by_id)
  state, hs = cell.run(*args, reverse)
  plain_state, plain_hs = base.scan(cell, *args, reverse)
  np.testing.assert_allclose(hs, plain_hs, atol=2e-6)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(plain_state)):
    np.testing.assert_allclose(got, want, atol=2e-6)

  weights = jnp.asarray(np.random.default_rng(9).standard_normal((TIME, BATCH, UNITS)),
                        jnp.float32)
  differentiable = (0, 1, 3, 4, 5)  # params, rows, masks, state; not the ids
  fused_run = lambda *a: cell.run(*a)
  generic_run = functools.partial(base.scan, cell)
  grads = jax.grad(functools.partial(weighted_loss, fused_run, weights), argnums=differentiable)(
      *args, reverse)
  plain = jax.grad(functools.partial(weighted_loss, generic_run, weights),
                   argnums=differentiable)(*args, reverse)
  for grad, want in zip(jax.tree.leaves(grads), jax.tree.leaves(plain), strict=True):
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5)
  _, d_rows, d_recurrent_mask, d_step_mask, _ = grads
  assert not np.asarray(d_recurrent_mask).any() and not np.asarray(d_step_mask).any()
  if masked and by_id:  # skipped steps pass the state's gradient through and get none
    read_rows = np.unique(np.asarray(args[2])[np.asarray(args[4][..., 0]) > 0])
    assert not np.asarray(d_rows)[np.setdiff1d(np.arange(ROWS), read_rows)].any()
  if masked and not by_id:
    assert not np.asarray(d_rows)[np.asarray(args[4][..., 0]).T == 0].any()
