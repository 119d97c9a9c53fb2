"""Training: optax Adam, the jitted step, the epoch loop with early stopping, orbax checkpoints."""

import json
from pathlib import Path
import sys
import time
from typing import Any

from absl import logging
from flax import traverse_util
from flax.training import train_state
from flax.training.early_stopping import EarlyStopping
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax import checkpoints
from rnn_jax import data
from rnn_jax import metrics
from rnn_jax import embeddings
from rnn_jax.configs import Config, TrainConfig
from rnn_jax.errors import UserError
from rnn_jax.models import WordLSTM

KERAS_ADAM_EPSILON = 1e-7  # the walkthrough's Adam; optax defaults to 1e-8


def make_optimizer(config: TrainConfig, trainable_embeddings: bool) -> optax.GradientTransformation:
  # Without decay, plain Adam: its state is what runs saved before weight decay existed hold.
  optimizer = (optax.adamw(config.learning_rate, eps=KERAS_ADAM_EPSILON,
                           weight_decay=config.weight_decay) if config.weight_decay
               else optax.adam(config.learning_rate, eps=KERAS_ADAM_EPSILON))
  if config.clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)
  if trainable_embeddings:
    return optimizer
  label = lambda path, _: 'frozen' if path[0] == 'embed' else 'trained'
  return optax.multi_transform(
      {'trained': optimizer, 'frozen': optax.set_to_zero()},
      lambda params: traverse_util.path_aware_map(label, params))


def create_train_state(config: Config, vocab_size: int,
                       embedding_matrix: np.ndarray | None = None) -> train_state.TrainState:
  """A fresh model and optimizer; `embedding_matrix` (float[vocab, dim]) replaces the random one."""
  model = WordLSTM(config.model, vocab_size)
  dummy = jnp.zeros((1, config.data.training_length), jnp.int32)
  params = model.init(jax.random.key(config.seed), dummy, deterministic=True)['params']
  if embedding_matrix is not None:
    expected = params['embed']['embedding'].shape
    if embedding_matrix.shape != expected:
      raise UserError(f'embedding matrix has shape {embedding_matrix.shape}, expected {expected}')
    params['embed']['embedding'] = jnp.asarray(embedding_matrix, jnp.float32)
  tx = make_optimizer(config.train, config.model.trainable_embeddings)
  return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def train_step(state: train_state.TrainState, batch: tuple[jax.Array, ...],
               dropout_key: jax.Array) -> tuple[train_state.TrainState, metrics.Metrics]:
  """One Adam step on features: int32[batch, time] and labels, weights: int32, f32[batch] (the
  word after each window) or [batch, time] (the next word at every position)."""
  features, labels, weights = batch
  every_position = labels.ndim == 2
  if every_position:  # the model puts time first
    labels, weights = labels.T, weights.T
  step_key = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, features, deterministic=False,
                            every_position=every_position, rngs={'dropout': step_key})
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1), (logits, losses)

  (_, (logits, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads), metrics.batch_metrics(logits, labels, weights, losses)


class Progress:
  """A live progress line inside an epoch: steps, windows per second, time left."""

  def __init__(self, epoch: int, num_steps: int, batch_size: int):
    self.epoch, self.num_steps, self.batch_size = epoch, num_steps, batch_size
    self.start = time.perf_counter()
    self.live = sys.stderr.isatty()

  def update(self, step: int, means: dict[str, float]):
    elapsed = time.perf_counter() - self.start
    rate = step * self.batch_size / max(elapsed, 1e-9)
    left = elapsed / step * (self.num_steps - step)
    line = (f'epoch {self.epoch} step {step}/{self.num_steps}  loss {means["loss"]:.4f}  '
            f'accuracy {means["accuracy"]:.4f}  {rate:,.0f} windows/s  ETA {left:.0f}s')
    if self.live:
      print('\r' + line, end='', file=sys.stderr, flush=True)
    else:
      logging.info(line)

  def done(self):
    if self.live:
      print('\r\033[K', end='', file=sys.stderr, flush=True)


def training_data(dataset: data.Dataset, config: Config) -> data.Windows | data.Chunks:
  """What one epoch runs through: the training windows, or for the every-position objective
  the training texts in pieces of a window's length."""
  if config.train.objective == 'every':
    return data.make_chunks(dataset.train_texts, config.data.training_length)
  return dataset.train


def train_epoch(step_fn, state, windows: data.Windows | data.Chunks, config: Config, epoch: int,
                dropout_key: jax.Array) -> tuple[Any, dict[str, float]]:
  """Runs one shuffled pass; metrics stay on the device until a log step reads them."""
  batch_size = config.train.batch_size
  progress = Progress(epoch, -(-len(windows) // batch_size), batch_size)
  pending, totals = [], {}
  batches = data.batches(windows, batch_size, seed=config.seed, epoch=epoch)
  for step, batch in enumerate(batches, 1):
    state, sums = step_fn(state, batch, dropout_key)
    pending.append(sums)
    if step % config.train.log_every == 0 or step == progress.num_steps:
      _accumulate(totals, jax.device_get(pending), int(state.step) - len(pending))
      pending = []
      progress.update(step, metrics.summarize(totals))
  progress.done()
  return state, metrics.summarize(totals)


def _accumulate(totals: dict[str, float], steps: list[dict[str, np.ndarray]], first_step: int):
  """Adds per-step sums to totals; a non-finite loss stops the run, naming its step."""
  for offset, sums in enumerate(steps):
    if not np.isfinite(sums['loss']):
      raise UserError(f'the training loss became {sums["loss"]} at step '
                      f'{first_step + offset + 1}; lower --learning_rate or set --clip_norm')
    for name, value in sums.items():
      totals[name] = totals.get(name, 0.0) + float(value)


def _early_stopping(config: TrainConfig, progress: dict[str, Any]) -> EarlyStopping:
  # Keras stops after `patience` epochs without improvement; flax's counter stops one later.
  stopper = EarlyStopping(min_delta=config.min_delta, patience=max(config.patience - 1, 0))
  if 'best_metric' not in progress:
    return stopper
  # Recomputed rather than restored, so a resumed run may be given more patience.
  count = progress['patience_count']
  return stopper.replace(best_metric=progress['best_metric'], patience_count=count,
                         should_stop=count > stopper.patience)


def _fresh_state(config: Config, dataset: data.Dataset) -> train_state.TrainState:
  """A new model, its embedding read from `pretrained_embeddings` when the config names a file."""
  name, tokenizer = config.model.pretrained_embeddings, dataset.tokenizer
  if not name:
    return create_train_state(config, tokenizer.vocab_size)
  matrix, coverage = embeddings.embedding_matrix(embeddings.vectors_path(name), tokenizer,
                                                 config.model.embedding_dim)
  logging.info('Pre-trained embeddings: %s', coverage.summary())
  return create_train_state(config, tokenizer.vocab_size, matrix)


def _start_or_resume(workdir: Path, config: Config, dataset: data.Dataset, resume: bool):
  """(state, progress, checkpoint manager) to go on from: the latest checkpoint's, or fresh."""
  state = None
  if resume and checkpoints.has_run(workdir):
    _, saved_tokenizer = checkpoints.read_run(workdir)
    if saved_tokenizer.word_index != dataset.tokenizer.word_index:
      raise UserError(f'the data changed since the run in {workdir} began (another vocabulary)')
  else:
    # Before start_run clears the work dir: a bad vectors file leaves it as it was.
    state = _fresh_state(config, dataset)
    checkpoints.start_run(workdir, config, dataset.tokenizer)
  manager = checkpoints.manager(workdir)
  progress = {'epoch': 0}
  if manager.latest_step() is not None:
    target = create_train_state(config, dataset.tokenizer.vocab_size)
    state, progress = checkpoints.restore(manager, manager.latest_step(), target)
    logging.info('Resuming %s after epoch %d', workdir, progress['epoch'])
  elif state is None:  # a resumed run that ended before its first checkpoint
    state = _fresh_state(config, dataset)
  # Epochs after the checkpoint (a crash before its save finished) will run again.
  checkpoints.truncate_metrics(workdir, progress['epoch'])
  return state, progress, manager


def train_and_evaluate(config: Config, workdir: str | Path, *, resume: bool = False,
                       overwrite: bool = False) -> dict[str, Any]:
  """Trains until early stopping, then scores the best checkpoint; returns the final results."""
  workdir = Path(workdir)
  config = checkpoints.config_for(workdir, config, resume=resume, overwrite=overwrite)
  dataset = data.prepare(config)
  logging.info('Data: %s', json.dumps(dataset.summary()))
  if not config.model.trainable_embeddings and not config.model.pretrained_embeddings:
    logging.warning('Frozen embeddings without pre-trained vectors stay at their random init.')
  state, progress, manager = _start_or_resume(workdir, config, dataset, resume)
  stopper = _early_stopping(config.train, progress)
  step_fn = jax.jit(train_step, donate_argnums=0)
  eval_fn = jax.jit(metrics.eval_step)
  dropout_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  train_data = training_data(dataset, config)
  try:
    for epoch in range(progress['epoch'] + 1, config.train.max_epochs + 1):
      if stopper.should_stop:
        break
      start = time.perf_counter()
      state, train_metrics = train_epoch(step_fn, state, train_data, config, epoch, dropout_key)
      val = metrics.evaluate(eval_fn, state, dataset.valid, config.train.eval_batch_size)
      stopper = stopper.update(val['loss'])
      record = {'epoch': epoch, 'train_loss': train_metrics['loss'],
                'train_accuracy': train_metrics['accuracy'], 'val_loss': val['loss'],
                'val_accuracy': val['accuracy'], 'val_top5_accuracy': val['top5_accuracy'],
                'seconds': round(time.perf_counter() - start, 2)}
      progress = {'epoch': epoch, 'best_metric': stopper.best_metric,
                  'patience_count': stopper.patience_count}
      checkpoints.save(manager, epoch, state, progress, val['loss'])
      checkpoints.append_metrics(workdir, record)
      logging.info('Epoch %d: train loss %.4f accuracy %.4f | val loss %.4f accuracy %.4f '
                   'top-5 %.4f | %.0fs%s', epoch, train_metrics['loss'],
                   train_metrics['accuracy'], val['loss'], val['accuracy'],
                   val['top5_accuracy'], record['seconds'],
                   ' (best)' if stopper.has_improved else '')
    manager.wait_until_finished()
    return metrics.final_evaluation(workdir, manager, state, dataset, eval_fn, config)
  finally:
    manager.close()


def load(workdir: str | Path, which: str = 'best') -> tuple[Config, Any, WordLSTM, Any]:
  """Rebuilds (config, tokenizer, model, params) from a work dir alone; which: best|latest."""
  if which not in ('best', 'latest'):
    raise UserError(f"which checkpoint: 'best' or 'latest', not {which!r}")
  config, tokenizer = checkpoints.read_run(workdir)
  manager = checkpoints.manager(workdir)
  try:
    step = manager.best_step() if which == 'best' else manager.latest_step()
    if step is None:
      raise UserError(f'{workdir} holds no checkpoint yet')
    target = create_train_state(config, tokenizer.vocab_size)
    state, _ = checkpoints.restore(manager, step, target)
  finally:
    manager.close()
  return config, tokenizer, WordLSTM(config.model, tokenizer.vocab_size), state.params
