"""The word-level recurrent language model in Flax (linen), parameter-compatible with Keras.

`WordRNN` maps a window of token ids to next-token logits. Training calls it whole; decoding
calls its methods through `model.apply(variables, ..., method=...)`, so the model that trains
is the model that decodes:

  state = model.apply(variables, tokens, method=WordRNN.read)          # padding skipped
  logits = model.apply(variables, state, method=WordRNN.predict)
  state = model.apply(variables, next_tokens[:, None], state, method=WordRNN.read)

A state is opaque outside the model: one cell state per layer, in the cell's own layout. The
parameter tree, with `<cell>` the config's cell name (`lstm`, `gru`):

  params['embed']['embedding']               f32[vocab_size, embedding_dim]
  params['<cell>_{i}'][...]                  the cell's parameters (`cells.base.Cell`)
  params['<cell>_{last}_reverse'][...]       (bidirectional only)
  params['dense']['kernel' | 'bias']
  params['logits']['kernel' | 'bias']        (only 'bias' with tied embeddings)

To start from pre-trained word vectors, replace `params['embed']['embedding']` after `init`
with a matrix of the same shape (row i is the vector of word id i; row 0 is padding).
"""

import functools
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp

from rnn_jax.configs import ModelConfig
from rnn_jax.errors import UserError
from rnn_jax.model import cells
from rnn_jax.model import layers

Array = jax.Array
State = tuple[Any, ...]  # one cell state per layer, first layer first (then the reverse layer)


class WordRNN(nn.Module):
  """Embedding -> stacked recurrent layers -> relu Dense -> Dropout -> next-token logits.

  Attributes:
    config: the model hyperparameters. With `trainable_embeddings` False (frozen, pre-trained
      vectors) a word whose vector is all zeros has none: the recurrent layers skip it, as the
      walkthrough's Masking layer did, their state carrying over.
    vocab_size: number of token ids, including 0 (padding).
  """
  config: ModelConfig
  vocab_size: int

  def setup(self):
    cfg = self.config
    self.cell = cells.CELLS[cfg.cell](cfg.rnn_units)
    layer = functools.partial(layers.RNN, self.cell, dropout=cfg.dropout,
                              recurrent_dropout=cfg.recurrent_dropout,
                              weight_drop=cfg.weight_drop, return_sequences=True,
                              time_major=True, dtype=jnp.dtype(cfg.compute_dtype))
    self.embed = nn.Embed(self.vocab_size, cfg.embedding_dim,
                          embedding_init=layers.symmetric_uniform(0.05))
    self.stack = [layer(name=f'{cfg.cell}_{i}') for i in range(cfg.rnn_layers)]
    self.backward = (layer(reverse=True, name=f'{cfg.cell}_{cfg.rnn_layers - 1}_reverse')
                     if cfg.bidirectional else None)
    self.dense = nn.Dense(cfg.dense_units, kernel_init=nn.initializers.glorot_uniform())
    # Named as the first version of the model named it: a module's dropout masks follow its
    # name, and runs saved then resume with the masks they would have drawn.
    self.dense_dropout = nn.Dropout(cfg.dense_dropout, name='Dropout_0')
    dtype = jnp.dtype(cfg.compute_dtype)
    self.logits = (layers.TiedLogits(self.vocab_size, dtype=dtype) if cfg.tie_embeddings
                   else layers.Affine(self.vocab_size, dtype=dtype))

  def __call__(self, tokens: Array, *, deterministic: bool, every_position: bool = False) -> Array:
    """Scores every token as the next one after each window.

    Args:
      tokens: int32[batch, time] token ids; 0 is padding when `mask_zero`.
      deterministic: if True, no dropout (and no 'dropout' rng is needed).
      every_position: score the next token after every position, not only after the last
        (unidirectional models only).

    Returns:
      Logits f32[batch, vocab_size] (no softmax); with `every_position`, f32[time, batch,
      vocab_size], time first as the recurrence runs (a transpose would copy them all).
    """
    _, h = self.encode(tokens, deterministic=deterministic, every_position=every_position)
    # Rows of a matrix: XLA's CPU backend runs the gradients of 3-D matmuls 3x slower.
    logits = self.head(h.reshape(-1, h.shape[-1]), deterministic=deterministic)
    return logits.reshape(*h.shape[:-1], -1)

  def encode(self, tokens: Array, state: State | None = None, *, deterministic: bool,
             every_position: bool = False, skip_padding: bool = False) -> tuple[State, Array]:
    """Runs the recurrent layers over tokens.

    Args:
      tokens: int32[batch, time].
      state: the state to start from (`read` gives one); None starts from each cell's initial
        state.
      deterministic: if True, no dropout.
      every_position: return the last layer's h after every position, not only after the last.
      skip_padding: carry the state over id 0, as `mask_zero` does (inference reads left-padded
        seeds this way).

    Returns:
      (the state after the last token, the last layer's h: f32[batch, features] after the last
      token, or f32[time, batch, features] after every position), features being rnn_units, or
      twice that for a bidirectional model.
    """
    cfg = self.config
    if every_position and cfg.bidirectional:
      raise UserError('a bidirectional model has no state after each position that saw only the '
                      'words before it')
    # Time first from the token ids on: the recurrence runs time-major, and transposing int ids
    # is cheaper than transposing embeddings.
    tokens = tokens.T
    table = self.embed.embedding
    mask = tokens != 0 if cfg.mask_zero or skip_padding else None
    if not cfg.trainable_embeddings:
      has_vector = jnp.any(table != 0, axis=-1)[tokens]
      mask = has_vector if mask is None else mask & has_vector
    if cfg.embedding_dropout and not deterministic:
      # A dropped word is dropped at every position of the batch (AWD-LSTM's embedding dropout).
      table = table * layers.dropout_mask(self.make_rng('dropout'), cfg.embedding_dropout,
                                          (self.vocab_size, 1), table.dtype)
    starts = (None,) * (len(self.stack) + cfg.bidirectional) if state is None else state
    # The first layer reads its inputs as rows of the word vectors.
    x, ids, states = table, tokens, []
    for layer, start in zip(self.stack, starts):
      layer_state, outputs = layer(x, mask, start, ids=ids, deterministic=deterministic)
      states.append(layer_state)
      last_input, last_ids, x, ids = x, ids, outputs, None
    self.sow('intermediates', 'hidden', x)  # what training's activation penalties read
    h = x if every_position else self.cell.output(states[-1])
    if self.backward is not None:
      backward_state, _ = self.backward(last_input, mask, starts[-1], ids=last_ids,
                                        deterministic=deterministic)
      states.append(backward_state)
      h = jnp.concatenate([h, self.cell.output(backward_state)], axis=-1)
    return tuple(states), h

  def head(self, h: Array, *, deterministic: bool) -> Array:
    """Next-token logits f32[..., vocab_size] from the last layer's h: f32[..., features]."""
    hidden = self.dense_dropout(nn.relu(self.dense(h)), deterministic=deterministic)
    if self.config.tie_embeddings:
      return self.logits(hidden, self.embed.embedding)
    return self.logits(hidden)

  def read(self, tokens: Array, state: State | None = None) -> State:
    """Inference: the state after reading tokens: int32[batch, time] (0 is padding, skipped),
    from `state` (None: the initial state)."""
    state, _ = self.encode(tokens, state, deterministic=True, skip_padding=True)
    return state

  def predict(self, state: State) -> Array:
    """Inference: next-token logits f32[batch, vocab_size] after a state from `read`."""
    h = [self.cell.output(state[len(self.stack) - 1])]
    if self.backward is not None:
      h.append(self.cell.output(state[-1]))
    return self.head(jnp.concatenate(h, axis=-1), deterministic=True)


def output_kernel(params) -> Array:
  """The output layer's kernel f32[dense_units, vocab]: its own, or the tied embedding's."""
  if 'kernel' in params['logits']:
    return params['logits']['kernel']
  return params['embed']['embedding'].T
