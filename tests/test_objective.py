"""The every-position objective (pieces of texts, a label at every word) and tied embeddings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from rnn_jax import train
from rnn_jax.configs import Config, DataConfig, ModelConfig, TrainConfig
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.model import word_rnn
from rnn_jax.model.word_rnn import WordRNN
from rnn_jax.training import optimizer

VOCAB = 13
SMALL = ModelConfig(embedding_dim=6, rnn_units=5, dense_units=6, rnn_layers=2)


def test_pieces_label_every_word_but_the_first_of_each_text_once():
  texts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10], [11, 12, 13, 14]]
  chunks = data.make_chunks(texts, 3)
  features, labels = chunks.take(np.arange(len(chunks)))
  np.testing.assert_array_equal(features, [[1, 2, 3], [4, 5, 6], [8, 9, 0], [11, 12, 13]])
  np.testing.assert_array_equal(labels, [[2, 3, 4], [5, 6, 7], [9, 0, 0], [12, 13, 14]])
  assert sorted(labels[labels != 0]) == sorted(w for t in texts for w in t[1:])


def test_padded_positions_and_padded_rows_weigh_nothing():
  chunks = data.make_chunks([[1, 2, 3, 4, 5], [6, 7]], 3)
  (_, labels, weights), = data.batches(chunks, 4)
  # Pieces [1 2 3] and [4 5] of the first text, [6 7] of the second, then a padded row.
  np.testing.assert_array_equal(weights, [[1, 1, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(labels[:3], [[2, 3, 4], [5, 0, 0], [7, 0, 0]])


@pytest.mark.parametrize('tie', [False, True])
def test_every_position_logits_equal_the_model_run_on_each_prefix(tie):
  config = dataclasses.replace(SMALL, tie_embeddings=tie)
  model = WordRNN(config, VOCAB)
  tokens = np.random.default_rng(0).integers(1, VOCAB, (3, 6)).astype(np.int32)
  params = model.init(jax.random.key(0), tokens, deterministic=True)
  every = model.apply(params, tokens, deterministic=True, every_position=True)
  assert every.shape == (6, 3, VOCAB)
  for t in range(6):
    last = model.apply(params, tokens[:, :t + 1], deterministic=True)
    np.testing.assert_allclose(every[t], last, rtol=1e-5, atol=1e-5)


def test_the_every_position_loss_sums_each_labelled_position_scored_on_its_prefix():
  # Without dropout, so that the step's forward pass is the deterministic one.
  quiet = dataclasses.replace(SMALL, dropout=0, recurrent_dropout=0, dense_dropout=0)
  state = train.create_train_state(Config(data=DataConfig(training_length=4), model=quiet), VOCAB)
  features = np.array([[1, 2, 3, 4], [5, 6, 7, 0]], np.int32)
  labels = np.array([[2, 3, 4, 5], [6, 7, 0, 0]], np.int32)
  weights = (labels != 0).astype(np.float32)
  # Jitted as training jits them: run op by op, the step and the model take seconds.
  _, metrics = jax.jit(train.train_step)(state, (features, labels, weights), jax.random.key(1))
  apply = jax.jit(state.apply_fn, static_argnames='deterministic')
  losses = []
  for row, t in zip(*np.nonzero(labels)):
    logits = apply({'params': state.params}, features[row:row + 1, :t + 1], deterministic=True)[0]
    losses.append(-jax.nn.log_softmax(logits)[labels[row, t]])
  assert float(metrics['count']) == len(losses) == 6
  np.testing.assert_allclose(float(metrics['loss']), np.sum(losses), rtol=1e-5)


def test_tied_logits_use_the_embedding_matrix():
  config = dataclasses.replace(SMALL, tie_embeddings=True)
  model = WordRNN(config, VOCAB)
  params = model.init(jax.random.key(0), np.ones((1, 3), np.int32), deterministic=True)['params']
  assert set(params['logits']) == {'bias'}
  np.testing.assert_array_equal(word_rnn.output_kernel(params), params['embed']['embedding'].T)
  h = jnp.ones((2, config.rnn_units))
  hidden = jax.nn.relu(h @ params['dense']['kernel'] + params['dense']['bias'])
  np.testing.assert_allclose(model.apply({'params': params}, h, deterministic=True,
                                         method=WordRNN.head),
                             hidden @ params['embed']['embedding'].T + params['logits']['bias'],
                             rtol=1e-5)


@pytest.mark.parametrize('fields, message', [
    (dict(split='windows'), "needs split 'abstracts'"),
    (dict(bidirectional=True), 'bidirectional'),
])
def test_every_position_refuses_what_would_leak(fields, message):
  data_fields = {k: v for k, v in fields.items() if k == 'split'}
  model_fields = {k: v for k, v in fields.items() if k != 'split'}
  with pytest.raises(UserError, match=message):
    Config(data=DataConfig(**data_fields), model=ModelConfig(**model_fields),
           train=TrainConfig(objective='every'))


def test_tying_needs_matching_widths():
  with pytest.raises(UserError, match='dense_units == embedding_dim'):
    ModelConfig(embedding_dim=100, dense_units=128, tie_embeddings=True)


def test_every_position_training_learns_the_cycle(corpus, tmp_path):
  config = tiny_config(corpus, objective='every', batch_size=16, max_epochs=4)
  config = dataclasses.replace(config, model=dataclasses.replace(
      config.model, embedding_dim=16, dense_units=16, tie_embeddings=True))
  results = train.train_and_evaluate(config, tmp_path)
  assert results['valid']['accuracy'] > 0.9


def test_embedding_dropout_drops_whole_words():
  config = dataclasses.replace(SMALL, dropout=0, recurrent_dropout=0, dense_dropout=0,
                               embedding_dropout=0.5)
  model = WordRNN(config, 200)
  tokens = np.tile(np.arange(1, 200, dtype=np.int32), (2, 1))  # every word, twice
  params = model.init(jax.random.key(0), tokens, deterministic=True)

  def loss(params):
    logits = model.apply(params, tokens, deterministic=False, rngs={'dropout': jax.random.key(3)})
    return jnp.sum(logits)

  rows = np.abs(jax.grad(loss)(params)['params']['embed']['embedding'][1:]).sum(axis=1)
  dropped = rows == 0
  # A dropped word gets no gradient from any of its positions; about half are dropped.
  assert 60 < dropped.sum() < 140
  assert np.all(rows[~dropped] > 0)
  deterministic = model.apply(params, tokens, deterministic=True)
  unregularised = dataclasses.replace(config, embedding_dropout=0)
  np.testing.assert_array_equal(
      deterministic, WordRNN(unregularised, 200).apply(params, tokens, deterministic=True))


def test_weight_decay_shrinks_weights_without_gradient():
  params = {'w': jnp.ones(3)}
  zero = {'w': jnp.zeros(3)}
  for decay, expected in ((0.0, 1.0), (0.1, 1 - 1e-2 * 0.1)):
    tx = optimizer.make_optimizer(TrainConfig(learning_rate=1e-2, weight_decay=decay), True)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates)['w'], expected, rtol=1e-6)
