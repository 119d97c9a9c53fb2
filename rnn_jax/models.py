"""Word-level LSTM language models in Flax (linen), parameter-compatible with Keras.

`LSTM` is a Keras-style LSTM layer built on `jax.lax.scan`; `lstm_cell` is its
recurrent step, exposed so a decoder can feed one token at a time:

  gates_x = x_t @ params['kernel'] + params['bias']
  c, h = lstm_cell((c, h), gates_x, params['recurrent_kernel'])

`WordLSTM` maps a window of word ids to next-word logits; `advance` and
`readout` run the same (unidirectional) model one token at a time, carrying
every layer's state, for stateful decoding. Its parameter tree is

  params['params']['embed']['embedding']          f32[vocab_size, embedding_dim]
  params['params']['lstm_{i}']['kernel' | 'recurrent_kernel' | 'bias']
  params['params']['lstm_{last}_reverse'][...]    (bidirectional only)
  params['params']['dense']['kernel' | 'bias']
  params['params']['logits']['kernel' | 'bias']  (only 'bias' with tied embeddings)

To start from pre-trained word vectors, replace
`params['params']['embed']['embedding']` after `init` with a matrix of the
same shape (row i is the vector of word id i; row 0 is padding).
"""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.typing import Dtype

from rnn_jax import recurrence
from rnn_jax.configs import ModelConfig

Array = jax.Array
State = tuple[Array, Array]  # (c, h), each f32[batch, units]
Stack = tuple[State, ...]  # one State per LSTM layer, first layer first


def unit_forget_bias(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
  """Zeros except ones in the forget-gate block (Keras `unit_forget_bias=True`)."""
  del key
  units = shape[-1] // 4
  return jnp.zeros(shape, dtype).at[..., units:2 * units].set(1.0)


def symmetric_uniform(scale: float) -> nn.initializers.Initializer:
  """U(-scale, scale), Keras' `RandomUniform` default for embeddings."""

  def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def lstm_cell(carry: State, gates_x: Array, recurrent_kernel: Array,
              recurrent_mask: Array | None = None) -> State:
  """One LSTM step with Keras' equations and gate order (i, f, c, o).

  Args:
    carry: (c, h), each f32[batch, units].
    gates_x: f32[batch, 4 * units], the input projection x_t @ kernel + bias.
    recurrent_kernel: f32[units, 4 * units].
    recurrent_mask: f32[batch, units] scaled dropout mask applied to h, or None.

  Returns:
    The new (c, h), each f32[batch, units].
  """
  c, h = carry
  if recurrent_mask is not None:
    h = h * recurrent_mask
  c, h, _, _ = recurrence.activate(gates_x + h @ recurrent_kernel, c)
  return c, h


def matmul(a: Array, b: Array, dtype: Dtype = jnp.float32) -> Array:
  """a @ b with operands in `dtype` and float32 sums and result (bfloat16 runs faster on CPUs
  with AVX512-BF16 or AMX)."""
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _dropout_mask(key: Array, rate: float, shape: tuple[int, ...], dtype: Dtype) -> Array:
  """Inverted-dropout mask: 0 with probability `rate`, else 1 / (1 - rate)."""
  keep = 1.0 - rate
  return jax.random.bernoulli(key, keep, shape).astype(dtype) / keep


class LSTM(nn.Module):
  """A Keras-compatible LSTM layer: same parameters, equations, masking and dropout.

  Attributes:
    units: width of the hidden and cell states.
    dropout: input dropout rate; one mask per sequence, shared over time.
    recurrent_dropout: dropout rate on h before the recurrent matmul; one mask
      per sequence, shared over time.
    reverse: read time from last to first; outputs stay aligned with inputs.
    return_sequences: return h at every step instead of only the final h.
    time_major: inputs, mask and outputs put time first ([time, batch, ...]), as the recurrence
      runs; batch-major arrays cost a transpose.
    dtype: the input projection's matmul operands; the recurrence stays float32.
  """
  units: int
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  reverse: bool = False
  return_sequences: bool = False
  time_major: bool = False
  dtype: Dtype = jnp.float32

  def initial_state(self, batch_size: int, dtype: Dtype = jnp.float32) -> State:
    """Zero (c, h), each [batch_size, units]."""
    zeros = jnp.zeros((batch_size, self.units), dtype)
    return zeros, zeros

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None = None,
               initial_state: State | None = None, *, deterministic: bool,
               ids: Array | None = None) -> tuple[State, Array]:
    """Runs the layer over a batch of sequences.

    Args:
      inputs: f32[batch, time, features] ([time, batch, features] if `time_major`); or, with
        `ids`, f32[rows, features], a table (word vectors) of which `ids` picks the inputs.
      mask: bool[batch, time] ([time, batch] if `time_major`); where False the state (c and
        h) carries over unchanged and the output repeats the carried h. None reads every step.
      initial_state: (c, h), each f32[batch, units]; None starts from zeros.
      deterministic: if True, no dropout (and no 'dropout' rng is needed).
      ids: int32[batch, time] ([time, batch] if `time_major`), rows of `inputs` to read. Without
        input dropout the layer projects each row once instead of each step, which for the
        walkthrough's model (16k rows, 2,048 x 50 steps) is a sixth of the work.

    Returns:
      ((c, h), outputs): the state after the last step read (position 0 when
      `reverse`), each f32[batch, units], and outputs f32[batch, time, units]
      ([time, batch, units] if `time_major`) if `return_sequences` else the final h
      f32[batch, units].
    """
    features = inputs.shape[-1]
    kernel = self.param('kernel', nn.initializers.glorot_uniform(),
                        (features, 4 * self.units))
    recurrent_kernel = self.param('recurrent_kernel', nn.initializers.orthogonal(),
                                  (self.units, 4 * self.units))
    bias = self.param('bias', unit_forget_bias, (4 * self.units,))
    if not self.time_major:
      inputs = inputs if ids is not None else jnp.swapaxes(inputs, 0, 1)
      ids = None if ids is None else ids.T
      mask = None if mask is None else mask.T
    time, batch = inputs.shape[:2] if ids is None else ids.shape
    dropping = not deterministic and (self.dropout > 0 or self.recurrent_dropout > 0)
    input_key, recurrent_key = jax.random.split(self.make_rng('dropout')) if dropping else (0, 0)
    rows, ids = self._rows(inputs, ids, kernel,
                           input_key if dropping and self.dropout > 0 else None)
    recurrent_mask = jnp.ones((batch, self.units), rows.dtype)
    if dropping and self.recurrent_dropout > 0:
      recurrent_mask = _dropout_mask(recurrent_key, self.recurrent_dropout, (batch, self.units),
                                     rows.dtype)
    step_mask = (jnp.ones((time, batch), rows.dtype) if mask is None
                 else mask.astype(rows.dtype))[..., None]
    c0, h0 = self.initial_state(batch, rows.dtype) if initial_state is None else initial_state
    state, outputs = recurrence.lstm(rows, ids, recurrent_kernel, bias, recurrent_mask,
                                     step_mask, c0, h0, self.reverse)
    if self.return_sequences:
      return state, outputs if self.time_major else jnp.swapaxes(outputs, 0, 1)
    return state, state[1]

  def _rows(self, inputs: Array, ids: Array | None, kernel: Array,
            dropout_key: Array | None) -> tuple[Array, Array | None]:
    """The input projections `recurrence.lstm` reads, and the ids it reads them by.

    A table read through `ids` without input dropout is projected row by row, when it has fewer
    rows than there are steps: (f32[rows, 4 * units], ids). Otherwise every step's input is
    projected: (f32[batch, time, 4 * units], None), in one matmul on 2-D operands (XLA's CPU
    backend runs its gradient 3x slower on 3-D ones), batch-major so that the merged dimension
    keeps a batch split over devices.
    """
    if ids is not None and dropout_key is None and len(inputs) < ids.size:
      return matmul(inputs, kernel, self.dtype), ids
    inputs = jnp.swapaxes(inputs, 0, 1) if ids is None else inputs[ids.T]
    batch, time, features = inputs.shape
    if dropout_key is not None:
      mask = _dropout_mask(dropout_key, self.dropout, (batch, features), inputs.dtype)
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


class WordLSTM(nn.Module):
  """Embedding -> stacked LSTMs -> relu Dense -> Dropout -> next-word logits.

  Attributes:
    config: the model hyperparameters. With `trainable_embeddings` False (frozen, pre-trained
      vectors) a word whose vector is all zeros has none: the LSTMs skip it, as the
      walkthrough's Masking layer did, their state carrying over.
    vocab_size: number of word ids, including 0 (padding).
  """
  config: ModelConfig
  vocab_size: int

  @nn.compact
  def __call__(self, tokens: Array, *, deterministic: bool, every_position: bool = False) -> Array:
    """Scores every word as the next one after each window.

    Args:
      tokens: int32[batch, time] word ids; 0 is padding when `mask_zero`.
      deterministic: if True, no dropout (and no 'dropout' rng is needed).
      every_position: score the next word after every position, not only after the last
        (unidirectional models only).

    Returns:
      Logits f32[batch, vocab_size] (no softmax); with `every_position`, f32[time, batch,
      vocab_size], time first as the recurrence runs (a transpose would copy them all).
    """
    cfg = self.config
    # Time first from the token ids on: the recurrence runs time-major, and transposing int ids
    # is cheaper than transposing embeddings.
    tokens = tokens.T
    embed = nn.Embed(self.vocab_size, cfg.embedding_dim,
                     embedding_init=symmetric_uniform(0.05), name='embed')
    mask = tokens != 0 if cfg.mask_zero else None
    if not cfg.trainable_embeddings:
      has_vector = jnp.any(embed.embedding != 0, axis=-1)[tokens]
      mask = has_vector if mask is None else mask & has_vector

    dtype = jnp.dtype(cfg.compute_dtype)

    def lstm(name: str, **kwargs) -> LSTM:
      return LSTM(cfg.lstm_units, dropout=cfg.dropout, recurrent_dropout=cfg.recurrent_dropout,
                  time_major=True, dtype=dtype, name=name, **kwargs)

    # The first layer reads its inputs as rows of the word vectors.
    x, ids = embed.embedding, tokens
    if cfg.embedding_dropout and not deterministic:
      # A dropped word is dropped at every position of the batch (AWD-LSTM's embedding dropout).
      x = x * _dropout_mask(self.make_rng('dropout'), cfg.embedding_dropout,
                            (self.vocab_size, 1), x.dtype)
    last = cfg.lstm_layers - 1
    for i in range(last):
      _, x = lstm(f'lstm_{i}', return_sequences=True)(x, mask, ids=ids,
                                                       deterministic=deterministic)
      ids = None
    _, h = lstm(f'lstm_{last}', return_sequences=every_position)(
        x, mask, ids=ids, deterministic=deterministic)
    if cfg.bidirectional:
      _, h_backward = lstm(f'lstm_{last}_reverse', reverse=True)(
          x, mask, ids=ids, deterministic=deterministic)
      h = jnp.concatenate([h, h_backward], axis=-1)
    # Rows of a matrix: XLA's CPU backend runs the gradients of 3-D matmuls 3x slower.
    rows = h.reshape(-1, h.shape[-1])

    h = nn.Dense(cfg.dense_units, kernel_init=nn.initializers.glorot_uniform(),
                 name='dense')(rows)
    h = nn.Dropout(cfg.dense_dropout)(nn.relu(h), deterministic=deterministic)
    if cfg.tie_embeddings:
      logits = TiedLogits(self.vocab_size, dtype=dtype, name='logits')(h, embed.embedding)
    else:
      logits = Affine(self.vocab_size, dtype=dtype, name='logits')(h)
    return logits.reshape(*tokens.shape, -1) if every_position else logits


class TiedLogits(nn.Module):
  """Logits from the embedding matrix itself (transposed) and a bias of their own."""
  features: int
  dtype: Dtype = jnp.float32  # the matmuls' operands

  @nn.compact
  def __call__(self, x: Array, embedding: Array) -> Array:
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return affine(x, embedding.T, bias, self.dtype)


def output_kernel(params) -> Array:
  """The output layer's kernel f32[dense_units, vocab]: its own, or the tied embedding's."""
  if 'kernel' in params['logits']:
    return params['logits']['kernel']
  return params['embed']['embedding'].T


def initial_stack(config: ModelConfig, batch_shape: tuple[int, ...] = ()) -> Stack:
  """Zero states for every layer, each f32[*batch_shape, lstm_units]."""
  zeros = jnp.zeros((*batch_shape, config.lstm_units), jnp.float32)
  return tuple((zeros, zeros) for _ in range(config.lstm_layers))


def advance(params, config: ModelConfig, stack: Stack, tokens: Array) -> Stack:
  """Feeds one token per sequence through every LSTM layer (inference: no dropout).

  Args:
    params: WordLSTM parameters of a unidirectional model.
    stack: the states before the token, each f32[*batch, lstm_units].
    tokens: int32[*batch]; where a token is 0 (padding) the state carries over unchanged, so
      left-padded seeds of different lengths can be read in one batch; so it does, with frozen
      embeddings, where the token's vector is all zeros (as in `WordLSTM`).

  Returns:
    The states after the token.
  """
  x = params['embed']['embedding'][tokens]
  new_stack = []
  for i, state in enumerate(stack):
    layer = params[f'lstm_{i}']
    state = lstm_cell(state, x @ layer['kernel'] + layer['bias'], layer['recurrent_kernel'])
    new_stack.append(state)
    x = state[1]
  read = (tokens != 0)[..., None]
  if not config.trainable_embeddings:
    read &= jnp.any(params['embed']['embedding'][tokens] != 0, axis=-1, keepdims=True)
  return tuple(tuple(jnp.where(read, new, old) for new, old in zip(new_state, old_state))
               for new_state, old_state in zip(new_stack, stack))


def readout(params, h: Array) -> Array:
  """Next-word logits f32[*batch, vocab] from the last layer's h: f32[*batch, lstm_units]."""
  dense = params['dense']
  hidden = nn.relu(h @ dense['kernel'] + dense['bias'])
  return affine(hidden, output_kernel(params), params['logits']['bias'])
