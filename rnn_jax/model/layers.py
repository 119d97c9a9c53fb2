"""The layers of the word models: a recurrent layer over any cell, and output layers.

`RNN` runs a cell (`cells.CELLS`) over time with everything around the step: the input
projection (of a table's rows once, when it reads them through ids), one dropout mask per
sequence on inputs and on h, masking (the state carries over masked steps), reverse, time-major
arrays and bfloat16 matmuls. `affine` is x @ kernel + bias with the bias folded into the matmul.
"""

import functools
from typing import Any

from flax import linen as nn
from flax.typing import Dtype
import jax
import jax.numpy as jnp

from rnn_jax.model import cells

Array = jax.Array


def symmetric_uniform(scale: float) -> nn.initializers.Initializer:
  """U(-scale, scale), Keras' `RandomUniform` default for embeddings."""

  def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def matmul(a: Array, b: Array, dtype: Dtype = jnp.float32) -> Array:
  """a @ b with operands in `dtype` and float32 sums and result (bfloat16 runs faster on CPUs
  with AVX512-BF16 or AMX)."""
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def dropout_mask(key: Array, rate: float, shape: tuple[int, ...], dtype: Dtype) -> Array:
  """Inverted-dropout mask: 0 with probability `rate`, else 1 / (1 - rate)."""
  keep = 1.0 - rate
  return jax.random.bernoulli(key, keep, shape).astype(dtype) / keep


class RNN(nn.Module):
  """A recurrent layer over any cell, with Keras' masking and dropout.

  Attributes:
    cell: what one step does (`cells.CELLS`); the layer's parameters are the cell's.
    dropout: input dropout rate; one mask per sequence, shared over time.
    recurrent_dropout: dropout rate on h where it enters the recurrent matmul; one mask per
      sequence, shared over time.
    weight_drop: DropConnect rate on the cell's recurrent weights (AWD-LSTM's weight drop); one
      mask per batch, shared by its sequences and steps.
    reverse: read time from last to first; outputs stay aligned with inputs.
    return_sequences: return h at every step instead of only the final h.
    time_major: inputs, mask and outputs put time first ([time, batch, ...]), as the recurrence
      runs; batch-major arrays cost a transpose.
    dtype: the input projection's matmul operands; the recurrence stays float32.
  """
  cell: cells.base.Cell
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  weight_drop: float = 0.0
  reverse: bool = False
  return_sequences: bool = False
  time_major: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None = None, initial_state: Any = None, *,
               deterministic: bool, ids: Array | None = None) -> tuple[Any, Array]:
    """Runs the layer over a batch of sequences.

    Args:
      inputs: f32[batch, time, features] ([time, batch, features] if `time_major`); or, with
        `ids`, f32[rows, features], a table (word vectors) of which `ids` picks the inputs.
      mask: bool[batch, time] ([time, batch] if `time_major`); where False the state carries
        over unchanged and the output repeats the carried h. None reads every step.
      initial_state: the cell's state for the batch; None starts from the cell's initial state.
      deterministic: if True, no dropout (and no 'dropout' rng is needed).
      ids: int32[batch, time] ([time, batch] if `time_major`), rows of `inputs` to read. Without
        input dropout the layer projects each row once instead of each step, which for the
        walkthrough's model (16k rows, 2,048 x 50 steps) is a sixth of the work.

    Returns:
      (state, outputs): the cell's state after the last step read (position 0 when `reverse`),
      and outputs f32[batch, time, units] ([time, batch, units] if `time_major`) if
      `return_sequences` else the final h f32[batch, units].
    """
    params = self.cell.create_params(self.param, inputs.shape[-1])
    if not self.time_major:
      inputs = inputs if ids is not None else jnp.swapaxes(inputs, 0, 1)
      ids = None if ids is None else ids.T
      mask = None if mask is None else mask.T
    time, batch = inputs.shape[:2] if ids is None else ids.shape
    dropping = not deterministic and (self.dropout > 0 or self.recurrent_dropout > 0)
    input_key, recurrent_key = jax.random.split(self.make_rng('dropout')) if dropping else (0, 0)
    rows, ids = self._rows(inputs, ids, params['kernel'],
                           input_key if dropping and self.dropout > 0 else None)
    recurrent_mask = jnp.ones((batch, self.cell.units), rows.dtype)
    if dropping and self.recurrent_dropout > 0:
      recurrent_mask = dropout_mask(recurrent_key, self.recurrent_dropout,
                                    (batch, self.cell.units), rows.dtype)
    step_mask = (jnp.ones((time, batch), rows.dtype) if mask is None
                 else mask.astype(rows.dtype))[..., None]
    if initial_state is None:
      initial_state = self.cell.initial_state((batch,), rows.dtype)
    if self.weight_drop and not deterministic:
      params = self._drop_weights(params, self.make_rng('dropout'))
    state, outputs = self.cell.run(params, rows, ids, recurrent_mask, step_mask, initial_state,
                                   self.reverse)
    if self.return_sequences:
      return state, outputs if self.time_major else jnp.swapaxes(outputs, 0, 1)
    return state, self.cell.output(state)

  def _drop_weights(self, params: cells.base.Params, key: Array) -> cells.base.Params:
    keys = jax.random.split(key, len(self.cell.recurrent_weights))
    return params | {name: params[name] * dropout_mask(k, self.weight_drop, params[name].shape,
                                                       params[name].dtype)
                     for name, k in zip(self.cell.recurrent_weights, keys)}

  def _rows(self, inputs: Array, ids: Array | None, kernel: Array,
            dropout_key: Array | None) -> tuple[Array, Array | None]:
    """The input projections the cell reads, and the ids it reads them by.

    A table read through `ids` without input dropout is projected row by row, when it has fewer
    rows than there are steps: (f32[rows, width], ids). Otherwise every step's input is
    projected: (f32[batch, time, width], None), in one matmul on 2-D operands (XLA's CPU
    backend runs its gradient 3x slower on 3-D ones), batch-major so that the merged dimension
    keeps a batch split over devices.
    """
    if ids is not None and dropout_key is None and len(inputs) < ids.size:
      return matmul(inputs, kernel, self.dtype), ids
    inputs = jnp.swapaxes(inputs, 0, 1) if ids is None else inputs[ids.T]
    batch, time, features = inputs.shape
    if dropout_key is not None:
      mask = dropout_mask(dropout_key, self.dropout, (batch, features), inputs.dtype)
      inputs = inputs * mask[:, None]
    rows = matmul(inputs.reshape(-1, features), kernel, self.dtype)
    return rows.reshape(batch, time, -1), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def affine(x: Array, kernel: Array, bias: Array, dtype: Dtype = jnp.float32) -> Array:
  """x @ kernel + bias, the bias riding in the matmul as one more row of the kernel.

  On a CPU, adding a bias to [batch, vocab] logits afterwards costs a pass over them, and its
  gradient another; as a row of the kernel it costs the matmul one more row. The gradient is
  written out so that x's does not pass through that row too: an odd-width [batch, 129] result
  runs at half the speed of [batch, 128]. `dtype` is the matmuls' operand type.
  """
  return matmul(_with_ones(x), jnp.concatenate([kernel, bias[None]]), dtype)


def _with_ones(x: Array) -> Array:
  return jnp.concatenate([x, jnp.ones((*x.shape[:-1], 1), x.dtype)], axis=-1)


def _affine_fwd(x, kernel, bias, dtype):
  return affine(x, kernel, bias, dtype), (x, kernel)


def _affine_bwd(dtype, residuals, d_y):
  x, kernel = residuals
  inputs = _with_ones(x).astype(dtype).reshape(-1, x.shape[-1] + 1)
  d_kernel_and_bias = matmul(inputs.T, d_y.reshape(-1, d_y.shape[-1]), dtype)
  return matmul(d_y, kernel.T, dtype), d_kernel_and_bias[:-1], d_kernel_and_bias[-1]


affine.defvjp(_affine_fwd, _affine_bwd)


class Affine(nn.Module):
  """`nn.Dense` (same parameters and initialisation) computed with `affine`."""
  features: int
  dtype: Dtype = jnp.float32  # the matmuls' operands

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', nn.initializers.glorot_uniform(), (x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return affine(x, kernel, bias, self.dtype)


class TiedLogits(nn.Module):
  """Logits from the embedding matrix itself (transposed) and a bias of their own."""
  features: int
  dtype: Dtype = jnp.float32  # the matmuls' operands

  @nn.compact
  def __call__(self, x: Array, embedding: Array) -> Array:
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return affine(x, embedding.T, bias, self.dtype)
