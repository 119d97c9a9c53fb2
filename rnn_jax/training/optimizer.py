"""The optimizer and what rides on it: Adam (or AdamW), clipping, frozen embeddings, a learning
rate cut on plateaus, and an average of the weights.

Each option changes the state a checkpoint holds only when it is on, so runs saved before it
existed restore as they were.
"""

from typing import Any

from flax import struct
from flax import traverse_util
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from rnn_jax.configs import TrainConfig

KERAS_ADAM_EPSILON = 1e-7  # the walkthrough's Adam; optax defaults to 1e-8


def make_optimizer(config: TrainConfig, trainable_embeddings: bool) -> optax.GradientTransformation:
  """The run's optimizer; with `lr_plateau_factor` below 1 its learning rate is a hyperparameter
  in its state (optax.inject_hyperparams), which `cut_learning_rate` lowers."""

  def build(learning_rate):
    # Without decay, plain Adam: its state is what runs saved before weight decay existed hold.
    optimizer = (optax.adamw(learning_rate, eps=KERAS_ADAM_EPSILON,
                             weight_decay=config.weight_decay) if config.weight_decay
                 else optax.adam(learning_rate, eps=KERAS_ADAM_EPSILON))
    if config.clip_norm:
      optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)
    if trainable_embeddings:
      return optimizer
    label = lambda path, _: 'frozen' if path[0] == 'embed' else 'trained'
    return optax.multi_transform(
        {'trained': optimizer, 'frozen': optax.set_to_zero()},
        lambda params: traverse_util.path_aware_map(label, params))

  if config.lr_plateau_factor < 1:
    return optax.inject_hyperparams(build)(learning_rate=config.learning_rate)
  return build(config.learning_rate)


def learning_rate(state: train_state.TrainState) -> float | None:
  """The learning rate in the optimizer state, where it is one (a plateau-cut run)."""
  hyperparams = getattr(state.opt_state, 'hyperparams', None)
  return None if hyperparams is None else float(hyperparams['learning_rate'])


def cut_learning_rate(state: train_state.TrainState, factor: float) -> train_state.TrainState:
  """The state with its learning rate times `factor` (Keras' ReduceLROnPlateau, patience 1)."""
  hyperparams = dict(state.opt_state.hyperparams)
  hyperparams['learning_rate'] = hyperparams['learning_rate'] * factor
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


class AveragedState(train_state.TrainState):
  """A train state that also keeps an exponential moving average of the parameters.

  Averaged weights (Polyak averaging; AWD-LSTM averages with NT-ASGD) land in a flatter region
  than the last step's: they are what is evaluated, checkpointed as the best, and sampled from.
  Early on the decay is min(decay, (1 + step) / (10 + step)), so the average does not stay near
  the random initial weights.
  """
  average: Any = None  # the averaged parameters, the same tree as params
  average_decay: float = struct.field(pytree_node=False, default=0.0)

  def apply_gradients(self, *, grads, **kwargs) -> 'AveragedState':
    updated = super().apply_gradients(grads=grads, **kwargs)
    decay = jnp.minimum(self.average_decay, (1.0 + self.step) / (10.0 + self.step))
    average = jax.tree.map(lambda mean, new: decay * mean + (1 - decay) * new, self.average,
                           updated.params)
    return updated.replace(average=average)


def create(apply_fn, params: Any, config: TrainConfig,
           trainable_embeddings: bool) -> train_state.TrainState:
  """A fresh state: an AveragedState when the config averages the weights."""
  tx = make_optimizer(config, trainable_embeddings)
  if not config.average_decay:
    return train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=tx)
  # A copy: the train step donates the state, and a buffer cannot be donated twice.
  return AveragedState.create(apply_fn=apply_fn, params=params, tx=tx,
                              average=jax.tree.map(jnp.copy, params),
                              average_decay=config.average_decay)


def for_evaluation(state: train_state.TrainState) -> train_state.TrainState:
  """The state whose params are scored and sampled from: the average, when there is one."""
  if isinstance(state, AveragedState):
    return state.replace(params=state.average)
  return state
