"""The LSTM cell (Keras' equations, parameters and gate order i, f, c, o) and its fused recurrence.

`LSTMCell.step` is the plain step; `LSTMCell.run` replaces the generic `base.scan` with a
recurrence whose gradient is written by hand. Two things make it fast on a CPU, where a step is
small and XLA's cost per operation is high:

- The three sigmoids and the cell tanh are one tanh over all four gate blocks, using
  sigmoid(z) = (1 + tanh(z / 2)) / 2: one transcendental pass over [batch, 4 * units] instead of
  four over slices (4x faster on XLA's CPU backend).
- The gradient is written by hand: the backward loop recomputes tanh(c) rather than storing it,
  and gathers the gradients of the input rows and the recurrent kernel in its carry, so no
  [time, batch, 4 * units] array of gate gradients is written, nor one of gathered inputs in the
  forward loop. The input projection's own gradients are left to autodiff outside, one matmul
  each.

`tests/test_cells.py` holds `run` equal to `base.scan` over `step`, values and gradients.
"""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from rnn_jax.model.cells import base

Array = jax.Array


def _tanh_scale(units: int, dtype) -> Array:
  """Per-column factor inside the shared tanh: 1/2 for the sigmoid gates, 1 for the cell input."""
  half, one = jnp.full((units,), 0.5, dtype), jnp.ones((units,), dtype)
  return jnp.concatenate([half, half, one, half])


def activate(gates: Array, c: Array) -> tuple[Array, Array, Array, Array]:
  """The LSTM cell after its matmuls.

  Args:
    gates: f32[..., 4 * units], x_t @ kernel + h @ recurrent_kernel + bias.
    c: f32[..., units], the cell state before the step.

  Returns:
    (new c, new h, t, tanh(new c)), where t = tanh of the scaled gates is what the gradient
    needs of them.
  """
  units = c.shape[-1]
  t = jnp.tanh(gates * _tanh_scale(units, gates.dtype))
  t_i, t_f, g, t_o = jnp.split(t, 4, axis=-1)
  i, f, o = 0.5 + 0.5 * t_i, 0.5 + 0.5 * t_f, 0.5 + 0.5 * t_o
  c = f * c + i * g
  tanh_c = jnp.tanh(c)
  return c, o * tanh_c, t, tanh_c


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def fused(rows: Array, ids: Array, recurrent_kernel: Array, bias: Array, recurrent_mask: Array,
          step_mask: Array, c0: Array, h0: Array,
          reverse: bool) -> tuple[tuple[Array, Array], Array]:
  """`base.scan` over `LSTMCell.step`, fused, with its gradient written by hand.

  Args:
    rows: f32[n, 4 * units], projected word vectors (x @ kernel) of which `ids` picks each
      step's; or, without ids, f32[batch, time, 4 * units], every step's projected input.
      Batch-major, so that a batch split over devices stays split (XLA cannot shard a merged
      [time * batch] dimension along batch).
    ids: int32[time, batch], the vocabulary id each step reads from `rows`; or None.
    recurrent_kernel: f32[units, 4 * units].
    bias: f32[4 * units], added inside the step, where the add costs no pass of its own.
    recurrent_mask: f32[batch, units], multiplies h before the recurrent matmul (dropout; ones
      for none). It gets no gradient.
    step_mask: f32[time, batch, 1]: 1 reads the step, 0 carries (c, h) over it unchanged. It
      gets no gradient.
    c0, h0: the initial state, each f32[batch, units].
    reverse: read time from last to first; outputs stay aligned with inputs.

  Returns:
    ((c, h) after the last step read, h after every step: f32[time, batch, units]).
  """
  state, (hs, _) = _forward(rows, ids, recurrent_kernel, bias, recurrent_mask, step_mask, c0,
                            h0, reverse)
  return state, hs


def _forward(rows, ids, recurrent_kernel, bias, recurrent_mask, step_mask, c0, h0, reverse):
  """The scan; besides each h it returns what the backward pass needs: c before and t.

  Each step gathers its rows itself: a [time, batch, 4 * units] array of them would cost a pass
  to write and one to read.
  """

  def step(carry, xs):
    c, h = carry
    ids_t, read = xs
    gates = base.rows_at(rows, ids_t) + bias + (h * recurrent_mask) @ recurrent_kernel
    new_c, new_h, t, _ = activate(gates, c)
    new_c = jnp.where(read > 0, new_c, c)
    new_h = jnp.where(read > 0, new_h, h)
    return (new_c, new_h), (new_h, (c, t))

  return jax.lax.scan(step, (c0, h0), (base.step_ids(rows, ids), step_mask), reverse=reverse)


def _lstm_fwd(rows, ids, recurrent_kernel, bias, recurrent_mask, step_mask, c0, h0, reverse):
  state, (hs, (cs, ts)) = _forward(rows, ids, recurrent_kernel, bias, recurrent_mask, step_mask,
                                   c0, h0, reverse)
  return (state, hs), (rows, ids, recurrent_kernel, recurrent_mask, step_mask, h0, hs, cs, ts)


def _lstm_bwd(reverse, residuals, cotangents):
  rows, ids, recurrent_kernel, recurrent_mask, step_mask, h0, hs, cs, ts = residuals
  (d_c, d_h), d_hs = cotangents
  # d(gate pre-activation) = d(gate) * (1 - t^2) * scale^2: 1/4 for the sigmoids, 1 for tanh.
  slope = _tanh_scale(recurrent_kernel.shape[0], ts.dtype) ** 2
  # h before each step is the h after the one read before it, or h0 for the first one read.
  h_before = (jnp.concatenate([hs[1:], h0[None]]) if reverse
              else jnp.concatenate([h0[None], hs[:-1]]))

  def step(carry, xs):
    d_c, d_h, d_rows, d_kernel = carry
    d_h_out, read, c, t, ids_t, h_before_t = xs
    d_h = d_h + d_h_out
    d_h_cell, d_c_cell = d_h * read, d_c * read
    t_i, t_f, g, t_o = jnp.split(t, 4, axis=-1)
    i, f, o = 0.5 + 0.5 * t_i, 0.5 + 0.5 * t_f, 0.5 + 0.5 * t_o
    tanh_c = jnp.tanh(f * c + i * g)  # recomputed: cheaper than storing it
    d_c_cell = d_c_cell + d_h_cell * o * (1 - tanh_c * tanh_c)
    d_gates = jnp.concatenate([d_c_cell * g, d_c_cell * c, d_c_cell * i, d_h_cell * tanh_c],
                              axis=-1) * (1 - t * t) * slope
    # The rows' and the kernel's gradients gather in the carry, so no [time, batch, 4 * units]
    # array of gate gradients is ever written.
    d_rows = (d_rows.at[ids_t].add(d_gates) if ids_t.ndim
              else jax.lax.dynamic_update_index_in_dim(d_rows, d_gates, ids_t, axis=1))
    d_kernel = d_kernel + (h_before_t * recurrent_mask).T @ d_gates
    d_h_before = (d_gates @ recurrent_kernel.T) * recurrent_mask + d_h * (1 - read)
    d_c_before = d_c_cell * f + d_c * (1 - read)
    return (d_c_before, d_h_before, d_rows, d_kernel), jnp.sum(d_gates, axis=0)

  start = (d_c, d_h, jnp.zeros_like(rows), jnp.zeros_like(recurrent_kernel))
  (d_c0, d_h0, d_rows, d_kernel), d_bias = jax.lax.scan(
      step, start, (d_hs, step_mask, cs, ts, base.step_ids(rows, ids), h_before),
      reverse=not reverse)
  return (d_rows, None, d_kernel, d_bias.sum(0), None, None, d_c0, d_h0)


fused.defvjp(_lstm_fwd, _lstm_bwd)


def unit_forget_bias(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
  """Zeros except ones in the forget-gate block (Keras `unit_forget_bias=True`)."""
  del key
  units = shape[-1] // 4
  return jnp.zeros(shape, dtype).at[..., units:2 * units].set(1.0)


class LSTMCell(base.Cell):
  """Keras' `LSTM` cell. State (c, h), each f32[*batch, units]; parameters 'kernel'
  f32[features, 4 * units], 'recurrent_kernel' f32[units, 4 * units] and 'bias' f32[4 * units],
  with Keras' initialisers (Glorot uniform, orthogonal, ones in the forget-gate block)."""

  @property
  def width(self) -> int:
    return 4 * self.units

  def create_params(self, param, features: int) -> base.Params:
    return {'kernel': param('kernel', nn.initializers.glorot_uniform(), (features, self.width)),
            'recurrent_kernel': param('recurrent_kernel', nn.initializers.orthogonal(),
                                      (self.units, self.width)),
            'bias': param('bias', unit_forget_bias, (self.width,))}

  def initial_state(self, batch_shape: tuple[int, ...], dtype: Dtype = jnp.float32):
    zeros = jnp.zeros((*batch_shape, self.units), dtype)
    return zeros, zeros

  def step(self, params: base.Params, state, x: Array, recurrent_mask: Array):
    c, h = state
    gates = x + params['bias'] + (h * recurrent_mask) @ params['recurrent_kernel']
    c, h, _, _ = activate(gates, c)
    return c, h

  def output(self, state) -> Array:
    return state[1]

  def run(self, params: base.Params, rows: Array, ids: Array | None, recurrent_mask: Array,
          step_mask: Array, state, reverse: bool):
    return fused(rows, ids, params['recurrent_kernel'], params['bias'], recurrent_mask,
                 step_mask, *state, reverse)
