"""The GRU cell with Keras 3 `GRU` semantics (`reset_after=True`, its default).

Gate order z (update), r (reset), h (candidate); the bias has two rows, one added to the input
projection and one to the recurrent one, and the reset gate scales the recurrent candidate after
its matmul:

  z = sigmoid(x_z + b_z + h @ U_z + b'_z)
  r = sigmoid(x_r + b_r + h @ U_r + b'_r)
  candidate = tanh(x_h + b_h + r * (h @ U_h + b'_h))
  h_new = z * h + (1 - z) * candidate

It brings no fused path: `layers.RNN` runs it with the generic `base.scan`.
"""

from flax import linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from rnn_jax.model.cells import base

Array = jax.Array


class GRUCell(base.Cell):
  """Keras 3's `GRU` cell. State h: f32[*batch, units]; parameters 'kernel'
  f32[features, 3 * units] (Glorot uniform), 'recurrent_kernel' f32[units, 3 * units]
  (orthogonal) and 'bias' f32[2, 3 * units] (zeros: input bias, then recurrent bias)."""

  @property
  def width(self) -> int:
    return 3 * self.units

  def create_params(self, param, features: int) -> base.Params:
    return {'kernel': param('kernel', nn.initializers.glorot_uniform(), (features, self.width)),
            'recurrent_kernel': param('recurrent_kernel', nn.initializers.orthogonal(),
                                      (self.units, self.width)),
            'bias': param('bias', nn.initializers.zeros_init(), (2, self.width))}

  def initial_state(self, batch_shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
    return jnp.zeros((*batch_shape, self.units), dtype)

  def step(self, params: base.Params, state: Array, x: Array, recurrent_mask: Array) -> Array:
    h = state
    input_bias, recurrent_bias = params['bias']
    x_z, x_r, x_h = jnp.split(x + input_bias, 3, axis=-1)
    inner = (h * recurrent_mask) @ params['recurrent_kernel'] + recurrent_bias
    h_z, h_r, h_h = jnp.split(inner, 3, axis=-1)
    z = jax.nn.sigmoid(x_z + h_z)
    r = jax.nn.sigmoid(x_r + h_r)
    candidate = jnp.tanh(x_h + r * h_h)
    return z * h + (1 - z) * candidate

  def output(self, state: Array) -> Array:
    return state
