"""A run's TensorBoard events, read back with TensorBoard's own reader, against metrics.jsonl."""

import dataclasses
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator as event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from rnn_jax import train
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.training import checkpoints
from rnn_jax.training import events

from conftest import read_metrics, tiny_config

STEPS_PER_EPOCH = 13  # the tiny corpus's 806 training windows in batches of 64


def read_events(workdir) -> event_accumulator.EventAccumulator:
  """The reader TensorBoard's server uses: every summary as a tensor, none dropped."""
  reader = event_accumulator.EventAccumulator(str(workdir / events.DIRECTORY),
                                              size_guidance={event_accumulator.TENSORS: 0})
  reader.Reload()
  return reader


def scalars(reader, tag: str) -> tuple[list[int], np.ndarray]:
  found = reader.Tensors(tag)
  return ([event.step for event in found],
          np.array([tensor_util.make_ndarray(event.tensor_proto) for event in found]))


def test_samples_that_no_validation_text_is_long_enough_for_are_refused_before_training(
    corpus, tmp_path):
  config = tiny_config(corpus, samples_per_epoch=1)
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, training_length=25))
  with pytest.raises(UserError, match='no validation text has the 35 tokens a sample passage '
                                      'needs; set it to 0'):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / checkpoints.CONFIG).exists()


@pytest.mark.heavy
def test_events_hold_the_runs_figures_and_a_resumed_run_shows_each_step_once(corpus, tmp_path):
  config = tiny_config(corpus, log_every=5, samples_per_epoch=2)
  train.train_and_evaluate(config, tmp_path)
  # A crash after epoch 3's line and events, before its checkpoint was complete.
  shutil.rmtree(tmp_path / checkpoints.CHECKPOINTS / str(3 * STEPS_PER_EPOCH))
  (tmp_path / checkpoints.RESULTS).unlink()
  train.train_and_evaluate(config, tmp_path, resume=True)

  reader, records = read_events(tmp_path), read_metrics(tmp_path)
  epoch_ends = [STEPS_PER_EPOCH * record['epoch'] for record in records]
  assert epoch_ends == [13, 26, 39]
  for tag, name in [('val/loss', 'val_loss'), ('val/accuracy', 'val_accuracy'),
                    ('val/top5_accuracy', 'val_top5_accuracy'), ('val/bits', 'val_bits')]:
    steps, values = scalars(reader, tag)
    assert steps == epoch_ends, tag
    np.testing.assert_allclose(values, [record[name] for record in records], rtol=1e-6)
  assert scalars(reader, 'learning_rate')[0] == epoch_ends
  np.testing.assert_allclose(scalars(reader, 'learning_rate')[1], 0.03, rtol=1e-6)

  # Log steps 5, 10 and 13 of each epoch, once each: weighted by their windows, the means
  # since the last log step are the epoch's training figures.
  windows = len(data.prepare(config).train)
  assert -(-windows // 64) == STEPS_PER_EPOCH
  weights = np.array([5 * 64, 5 * 64, windows - 10 * 64]) / windows
  log_steps = [first + step for first in (0, 13, 26) for step in (5, 10, 13)]
  for tag, name in [('train/loss', 'train_loss'), ('train/accuracy', 'train_accuracy')]:
    steps, values = scalars(reader, tag)
    assert steps == log_steps, tag
    epoch_means = values.reshape(3, 3) @ weights
    np.testing.assert_allclose(epoch_means, [record[name] for record in records], rtol=1e-5)
  assert np.all(scalars(reader, 'train/windows_per_second')[1] > 0)

  samples = reader.Tensors('samples/text_summary')
  assert [event.step for event in samples] == epoch_ends
  texts = [tensor_util.make_ndarray(event.tensor_proto).item().decode() for event in samples]
  assert all(text.count('→') == config.train.samples_per_epoch for text in texts)

  starts = reader.PluginTagToContent('hparams')
  assert list(starts) == ['_hparams_/experiment', '_hparams_/session_start_info',
                          '_hparams_/session_end_info']  # from the fresh start alone
  start = plugin_data_pb2.HParamsPluginData.FromString(
      starts['_hparams_/session_start_info']).session_start_info
  assert start.hparams['rnn_units'].number_value == 8
  assert start.hparams['cell'].string_value == 'lstm'
