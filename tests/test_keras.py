"""WordRNN against real Keras 3 (JAX backend) with copied weights: logits and every gradient.

For every registered cell with a Keras counterpart, the same weights go into a Keras model built
as the walkthrough builds one (Embedding, stacked recurrent layers, an optional Bidirectional
last layer, a relu Dense, the output Dense), and both must give the same logits and the same
gradient of a cross-entropy loss with respect to each weight.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax.configs import ModelConfig
from rnn_jax.model.cells import CELLS
from rnn_jax.model.word_rnn import WordRNN

os.environ.setdefault('KERAS_BACKEND', 'jax')  # read once, when keras is first imported
keras = pytest.importorskip('keras')
if keras.backend.backend() != 'jax':
  pytest.skip(f'Keras runs on {keras.backend.backend()}, not JAX', allow_module_level=True)

VOCAB, EMBED, UNITS, DENSE, BATCH, TIME = 17, 5, 4, 6, 3, 7
KERAS_LAYERS = {'lstm': 'LSTM', 'gru': 'GRU'}  # registered cell -> keras.layers class name
# name -> (rnn_layers, bidirectional, mask_zero); compiling dominates, so the stacked,
# bidirectional and masked paths share one case.
CASES = {
    'single': (1, False, False),
    'masked_stacked_bidirectional': (2, True, True),
}


def tokens_for(mask_zero: bool) -> np.ndarray:
  """int32[BATCH, TIME]: any ids (0 included) or, masked, left-padded windows of nonzero ids."""
  rng = np.random.default_rng(1)
  if not mask_zero:
    return rng.integers(0, VOCAB, (BATCH, TIME), dtype=np.int32)
  tokens = rng.integers(1, VOCAB, (BATCH, TIME), dtype=np.int32)
  for row, padding in enumerate([0, 3, TIME - 1]):
    tokens[row, :padding] = 0
  return tokens


def keras_weights(tree, cell: str, rnn_layers: int, bidirectional: bool):
  """rnn-jax params (or their gradients) as each Keras layer's weights, in Keras' order.

  Returns [(layer name, [arrays])], one entry per layer of the Keras model after its Input; a
  Bidirectional layer's arrays are the forward layer's, then the backward layer's.
  """
  rnn = lambda name: [tree[name][k] for k in ('kernel', 'recurrent_kernel', 'bias')]
  layers = [('embed', [tree['embed']['embedding']])]
  layers += [(f'{cell}_{i}', rnn(f'{cell}_{i}')) for i in range(rnn_layers)]
  if bidirectional:
    last = f'{cell}_{rnn_layers - 1}'
    layers[-1] = (f'{last} + {last}_reverse', rnn(last) + rnn(f'{last}_reverse'))
  layers += [(name, [tree[name]['kernel'], tree[name]['bias']]) for name in ('dense', 'logits')]
  return layers


def keras_model(cell: str, rnn_layers: int, bidirectional: bool, mask_zero: bool):
  layer = getattr(keras.layers, KERAS_LAYERS[cell])
  last = layer(UNITS)
  return keras.Sequential(
      [keras.Input((TIME,), dtype='int32'),
       keras.layers.Embedding(VOCAB, EMBED, mask_zero=mask_zero)]
      + [layer(UNITS, return_sequences=True) for _ in range(rnn_layers - 1)]
      + [keras.layers.Bidirectional(last) if bidirectional else last,
         keras.layers.Dense(DENSE, activation='relu'),
         keras.layers.Dense(VOCAB)])


def random_params(model, tokens):
  """The model's parameter tree with every weight random: an initial zero or unit bias, or a
  small embedding, could hide a swapped gate. `eval_shape` traces init without compiling it."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, deterministic=True))
  rng = np.random.default_rng(3)
  return jax.tree.map(lambda leaf: jnp.asarray(0.5 * rng.standard_normal(leaf.shape), leaf.dtype),
                      shapes['params'])


def loss(logits, labels):
  """Summed softmax cross-entropy."""
  return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('cell', sorted(CELLS))
def test_matches_keras(cell, case):
  if cell not in KERAS_LAYERS:
    pytest.skip(f'Keras has no counterpart of the {cell!r} cell')
  rnn_layers, bidirectional, mask_zero = CASES[case]
  config = ModelConfig(embedding_dim=EMBED, cell=cell, rnn_units=UNITS, rnn_layers=rnn_layers,
                       bidirectional=bidirectional, dense_units=DENSE, mask_zero=mask_zero,
                       dropout=0.0, recurrent_dropout=0.0, dense_dropout=0.0)
  model = WordRNN(config, VOCAB)
  tokens = jnp.asarray(tokens_for(mask_zero))
  labels = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, BATCH), jnp.int32)
  params = random_params(model, tokens)
  reference = keras_model(cell, rnn_layers, bidirectional, mask_zero)
  weights = keras_weights(params, cell, rnn_layers, bidirectional)
  assert len(reference.layers) == len(weights)
  for layer, (name, arrays) in zip(reference.layers, weights):
    assert [tuple(w.shape) for w in layer.weights] == [a.shape for a in arrays], name
    layer.set_weights([np.asarray(a) for a in arrays])

  def rnn_jax_loss(params):
    logits = model.apply({'params': params}, tokens, deterministic=True)
    return loss(logits, labels), logits

  trainable = [v.value for v in reference.trainable_variables]
  non_trainable = [v.value for v in reference.non_trainable_variables]

  def keras_loss(trainable):
    logits, _ = reference.stateless_call(trainable, non_trainable, tokens, training=False)
    return loss(logits, labels), logits

  # Jitted: each side compiles once instead of running op by op.
  (value, logits), grad_tree = jax.jit(jax.value_and_grad(rnn_jax_loss, has_aux=True))(params)
  (keras_value, keras_logits), keras_grads = jax.jit(
      jax.value_and_grad(keras_loss, has_aux=True))(trainable)
  np.testing.assert_allclose(logits, keras_logits, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(value, keras_value, rtol=1e-5)
  grads = [(name, g) for name, arrays in keras_weights(grad_tree, cell, rnn_layers, bidirectional)
           for g in arrays]
  assert len(grads) == len(keras_grads) == len(reference.trainable_variables)
  for (name, grad), keras_grad, variable in zip(grads, keras_grads,
                                                reference.trainable_variables):
    assert np.abs(grad).max() > 0, f'{name}: no gradient'
    np.testing.assert_allclose(grad, keras_grad, rtol=1e-4, atol=1e-5,
                               err_msg=f'{name} / Keras {variable.path}')
