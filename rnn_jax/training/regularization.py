"""Penalties on the recurrent activations (Merity et al., 2018, "Regularizing and Optimizing
LSTM Language Models"), added to the training loss.

AR keeps the last recurrent layer's outputs small, TAR keeps them from jumping between steps;
AWD-LSTM found both to pay on small corpora. They read what `WordRNN.encode` sows.
"""

import jax
import jax.numpy as jnp

from rnn_jax.configs import TrainConfig


def activation_penalty(hidden: jax.Array, mask: jax.Array, config: TrainConfig) -> jax.Array:
  """activation_reg * mean(h^2) + temporal_activation_reg * mean((h_t - h_{t-1})^2).

  Args:
    hidden: f32[time, batch, units], the last recurrent layer's h after each position.
    mask: bool[time, batch], the positions that hold a token (padding holds none); a change
      counts where both of its positions do.
    config: the two coefficients.
  """
  mask = mask.astype(hidden.dtype)[..., None]
  squares = jnp.sum(jnp.square(hidden) * mask) / jnp.maximum(jnp.sum(mask) * hidden.shape[-1], 1)
  both = mask[1:] * mask[:-1]
  changes = jnp.sum(jnp.square(hidden[1:] - hidden[:-1]) * both) / jnp.maximum(
      jnp.sum(both) * hidden.shape[-1], 1)
  return config.activation_reg * squares + config.temporal_activation_reg * changes
