"""Training: optax Adam, the jitted step, the epoch loop with early stopping, orbax checkpoints."""

import functools
import json
import math
from pathlib import Path
import time
from typing import Any

from absl import logging
from flax.training import train_state
from flax.training.early_stopping import EarlyStopping
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax.configs import Config, TrainConfig
from rnn_jax.corpus import data
from rnn_jax.corpus import embeddings
from rnn_jax.errors import UserError
from rnn_jax.generation import passages
from rnn_jax.model.word_rnn import WordRNN
from rnn_jax.training import checkpoints
from rnn_jax.training import events
from rnn_jax.training import fine_tune
from rnn_jax.training import metrics
from rnn_jax.training import optimizer
from rnn_jax.training import preemption
from rnn_jax.training import progress_line
from rnn_jax.training import regularization
from rnn_jax.training.parallel import Parallel

def create_train_state(config: Config, vocab_size: int,
                       embedding_matrix: np.ndarray | None = None) -> train_state.TrainState:
  """A fresh model and optimizer; `embedding_matrix` (float[vocab, dim]) replaces the random one."""
  model = WordRNN(config.model, vocab_size)
  dummy = jnp.zeros((1, config.data.training_length), jnp.int32)
  params = model.init(jax.random.key(config.seed), dummy, deterministic=True)['params']
  if embedding_matrix is not None:
    expected = params['embed']['embedding'].shape
    if embedding_matrix.shape != expected:
      raise UserError(f'embedding matrix has shape {embedding_matrix.shape}, expected {expected}')
    params['embed']['embedding'] = jnp.asarray(embedding_matrix, jnp.float32)
  return optimizer.create(model.apply, params, config.train, config.model.trainable_embeddings)


def train_step(state: train_state.TrainState, batch: tuple[jax.Array, ...], dropout_key: jax.Array,
               *, config: TrainConfig = TrainConfig()
               ) -> tuple[train_state.TrainState, metrics.Metrics]:
  """One Adam step on features: int32[batch, time] and labels, weights: int32, f32[batch] (the
  word after each window) or [batch, time] (the next word at every position).

  The loss adds the config's activation penalties (AR, TAR) to the mean log loss; the metrics
  sum the log loss alone. A NaN or infinite loss or gradient makes the returned loss NaN; with
  `skip_nonfinite` the weights and optimizer state stay as they were instead, the batch's
  metrics count nothing, and the sums' 'skipped' is 1.
  """
  features, labels, weights = batch
  every_position = labels.ndim == 2
  if every_position:  # the model puts time first
    labels, weights = labels.T, weights.T
  step_key = jax.random.fold_in(dropout_key, state.step)

  apply = functools.partial(state.apply_fn, tokens=features, deterministic=False,
                            every_position=every_position, rngs={'dropout': step_key})

  def loss_fn(params):
    if config.activation_reg or config.temporal_activation_reg:
      logits, sown = apply({'params': params}, mutable=['intermediates'])
      hidden, = sown['intermediates']['hidden']
      penalty = regularization.activation_penalty(hidden, features.T != 0, config)
    else:
      logits, penalty = apply({'params': params}), 0.0
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1) + penalty, (logits,
                                                                                   losses)

  (loss, (logits, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  sums = metrics.batch_metrics(logits, labels, weights, losses)
  # A finite loss with a non-finite gradient poisons the weights all the same.
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g))
                                                   for g in jax.tree.leaves(grads)]))
  updated = state.apply_gradients(grads=grads)
  if not config.skip_nonfinite:
    return updated, sums | {'loss': jnp.where(finite, sums['loss'], jnp.nan)}
  keep = lambda new, old: jnp.where(finite, new, old)
  # The step count still advances: dropout keys and checkpoint numbers follow the batches.
  updated = jax.tree.map(keep, updated.replace(step=state.step), state).replace(step=updated.step)
  sums = {name: jnp.where(finite, value, 0.0) for name, value in sums.items()}
  return updated, sums | {'skipped': (~finite).astype(jnp.float32)}


def training_data(dataset: data.Dataset, config: Config) -> data.Windows | data.Chunks:
  """What one epoch runs through: the training windows, or for the every-position objective
  the training texts in pieces of a window's length."""
  if config.train.objective == 'every':
    return data.make_chunks(dataset.train_texts, config.data.training_length)
  return dataset.train


def train_epoch(step_fn, state, windows: data.Windows | data.Chunks, config: Config,
                progress: dict[str, Any], dropout_key: jax.Array, save_inside,
                stop: preemption.StopRequest, parallel: Parallel,
                event_log: events.EventLog) -> tuple[Any, dict[str, float]]:
  """Runs the epoch after progress['epoch'] from where `progress` left it; returns the state and
  the epoch's metric sums. Metrics stay on the device until a log step or a save reads them;
  the event log gets those since the last read. Each process reads its rows of every batch,
  which `parallel` splits over the mesh.

  `save_inside(state, step, position)` saves at every checkpoint_every_steps-th global step and
  when `stop` asks (the processes of a run agree at log steps), except at the epoch's last step:
  the epoch's own checkpoint follows.
  """
  epoch, done = progress['epoch'] + 1, progress.get('batches_done', 0)
  batch_size, every = config.train.batch_size, config.train.checkpoint_every_steps
  num_steps = -(-len(windows) // batch_size)
  line = progress_line.ProgressLine(epoch, num_steps, batch_size, done)
  pending, totals = [], dict(progress.get('train_sums', {}))
  batches = data.batches(windows, batch_size, seed=config.seed, epoch=epoch, start=done,
                         rows=parallel.rows(batch_size))
  try:  # the line is cleared also when a stop or a NaN ends the epoch early
    for step, batch in enumerate(batches, done + 1):
      state, sums = step_fn(state, parallel.batch(batch, batch_size), dropout_key)
      pending.append(sums)
      global_step = (epoch - 1) * num_steps + step
      asked = stop.requested(check=step % config.train.log_every == 0)
      save = step < num_steps and (asked or every and global_step % every == 0)
      if save or step % config.train.log_every == 0 or step == num_steps:
        # Read before every save too: a non-finite loss stops the run before its state is saved.
        fetched, first = jax.device_get(pending), global_step - len(pending)
        since, pending = _accumulate({}, fetched, first), []
        _accumulate(totals, fetched, first)  # step by step, as the sums saved before
        rate = line.update(step, metrics.summarize(totals))
        event_log.training(global_step, metrics.summarize(since), rate)
      if save:
        # A copy: orbax writes the JSON in the background while the sums go on growing.
        save_inside(state, global_step, {'batches_done': step, 'train_sums': dict(totals)})
  finally:
    line.done()
  return state, totals


def _accumulate(totals: dict[str, float], steps: list[dict[str, np.ndarray]],
                first_step: int) -> dict[str, float]:
  """Adds per-step sums to totals, and returns them; a non-finite loss stops the run, naming
  its step."""
  for offset, sums in enumerate(steps):
    if not np.isfinite(sums['loss']):
      raise UserError(f'the training loss or its gradient became non-finite at step '
                      f'{first_step + offset + 1} (loss {sums["loss"]}); lower --learning_rate, '
                      'set --clip_norm, or pass --skip_nonfinite to skip such batches')
    for name, value in sums.items():
      totals[name] = totals.get(name, 0.0) + float(value)
  return totals


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
  """A new model, its embedding read from `pretrained_embeddings` when the config names a file;
  with `init_from`, the trained run's parameters and a fresh optimizer."""
  name, tokenizer = config.model.pretrained_embeddings, dataset.tokenizer
  if config.train.init_from:
    params = load(*fine_tune.source(config.train.init_from))[3]
    return optimizer.create(WordRNN(config.model, tokenizer.vocab_size).apply, params,
                            config.train, config.model.trainable_embeddings)
  if not name:
    return create_train_state(config, tokenizer.vocab_size)
  matrix, coverage = embeddings.embedding_matrix(embeddings.vectors_path(name), tokenizer,
                                                 config.model.embedding_dim)
  logging.info('Pre-trained embeddings: %s', coverage.summary())
  return create_train_state(config, tokenizer.vocab_size, matrix)


def _start_or_resume(workdir: Path, config: Config, dataset: data.Dataset, resume: bool,
                     parallel: Parallel):
  """(state, progress) to go on from, on the mesh: the latest readable checkpoint's, or fresh."""
  state, progress = None, {'epoch': 0}
  if resume and checkpoints.has_run(workdir):
    _, saved_tokenizer = checkpoints.read_run(workdir)
    if saved_tokenizer.to_json() != dataset.tokenizer.to_json():
      raise UserError(f'the data changed since the run in {workdir} began (other word counts)')
    checkpoints.write_config(workdir, config)
    restored = checkpoints.restore_latest(
        workdir, parallel.place(create_train_state(config, dataset.tokenizer.vocab_size)))
    if restored:
      state, progress = restored
      logging.info('Resuming %s at step %d: %d epochs done and %d batches of the next', workdir,
                   int(state.step), progress['epoch'], progress.get('batches_done', 0))
  else:
    # Before start_run clears the work dir: a bad vectors file leaves it as it was.
    state = parallel.place(_fresh_state(config, dataset))
    checkpoints.start_run(workdir, config, dataset.tokenizer)
  if state is None:  # a resumed run that ended before its first checkpoint
    state = parallel.place(_fresh_state(config, dataset))
  # Epochs after the checkpoint (a crash before its save finished) will run again.
  checkpoints.restore_metrics(workdir, progress)
  parallel.barrier('start_or_resume')  # process 0 has cleared or set aside what others read
  return state, progress


def train_and_evaluate(config: Config, workdir: str | Path, *, resume: bool = False,
                       overwrite: bool = False, parallel: Parallel | None = None) -> dict[str, Any]:
  """Trains until early stopping, then scores the best checkpoint; returns the final results.

  `parallel` splits each batch over a mesh's data axis; by default every device's.

  SIGTERM or SIGINT stops it after the step in flight with its state saved: raises
  `preemption.Stopped`. A failed write (a full disk) raises UserError; complete checkpoints stay.
  """
  workdir = Path(workdir)
  config = checkpoints.config_for(workdir, config, resume=resume, overwrite=overwrite)
  parallel = parallel or Parallel.create()
  parallel.barrier('config_for')  # every process has read the work dir before process 0 writes
  parallel.check_batch_size(config.train.batch_size, 'batch_size')
  parallel.check_batch_size(config.train.eval_batch_size, 'eval_batch_size')
  dataset = data.prepare(config, fine_tune.tokenizer(workdir, config, resume))
  logging.info('Data: %s', json.dumps(dataset.summary()))
  if config.train.samples_per_epoch:
    passages.check(dataset.valid_texts, config.data.training_length)
  if config.train.init_from:
    logging.info('Fine-tuning %s: %s', config.train.init_from,
                 fine_tune.describe_outside(dataset.outside_vocabulary))
  if not config.model.trainable_embeddings and not config.model.pretrained_embeddings:
    logging.warning('Frozen embeddings without pre-trained vectors stay at their random init.')
  state, progress = _start_or_resume(workdir, config, dataset, resume, parallel)
  manager = checkpoints.manager(workdir, training=True)
  try:
    with (preemption.StopRequest() as stop,
          events.EventLog(workdir, config, int(state.step)) as event_log):
      state = _train(config, dataset, workdir, manager, state, progress, stop, parallel,
                     event_log)
    checkpoints.finish(manager)
    eval_fn = jax.jit(metrics.eval_step)
    return metrics.final_evaluation(workdir, manager, state, dataset, eval_fn, config, parallel)
  finally:
    checkpoints.close(manager)  # waits for a save in flight, whatever stopped the run


def _train(config: Config, dataset: data.Dataset, workdir: Path, manager, state, progress,
           stop: preemption.StopRequest, parallel: Parallel, event_log: events.EventLog):
  """The epoch loop with early stopping, from `progress` on; returns the last state."""
  stopper = _early_stopping(config.train, progress)
  step_fn = jax.jit(functools.partial(train_step, config=config.train),
                    donate_argnums=0)
  eval_fn = jax.jit(metrics.eval_step)
  dropout_key = parallel.place(jax.random.fold_in(jax.random.key(config.seed), 1))
  train_data = training_data(dataset, config)

  def save_inside(state, step: int, position: dict[str, Any]):
    checkpoints.save(manager, step, state, progress | position)
    _stop_if_asked(manager, stop, step)

  for epoch in range(progress['epoch'] + 1, config.train.max_epochs + 1):
    if stopper.should_stop:
      break
    start = time.perf_counter()
    state, sums = train_epoch(step_fn, state, train_data, config, progress, dropout_key,
                              save_inside, stop, parallel, event_log)
    train_metrics = metrics.summarize(sums)
    val = metrics.evaluate(eval_fn, optimizer.for_evaluation(state), dataset.valid,
                           config.train.eval_batch_size, parallel)
    if not math.isfinite(val['loss']):
      raise UserError(f'the validation loss became {val["loss"]} after epoch {epoch}, which is '
                      'not saved (the last good checkpoint stays); lower --learning_rate or set '
                      '--clip_norm')
    stopper = stopper.update(val['loss'])
    record = {'epoch': epoch, 'train_loss': train_metrics['loss'],
              'train_bits': train_metrics['bits'], 'train_accuracy': train_metrics['accuracy'],
              'val_loss': val['loss'], 'val_bits': val['bits'], 'val_accuracy': val['accuracy'],
              'val_top5_accuracy': val['top5_accuracy'],
              'seconds': round(time.perf_counter() - start, 2)}
    if config.train.skip_nonfinite:
      record['skipped_batches'] = int(sums.get('skipped', 0))
    if config.train.lr_plateau_factor < 1:
      record['learning_rate'] = optimizer.learning_rate(state)
      if not stopper.has_improved:  # the next epoch runs at the lower rate
        state = optimizer.cut_learning_rate(state, config.train.lr_plateau_factor)
    # The record too: a line lost or cut beside a complete checkpoint is written again from it.
    progress = {'epoch': epoch, 'best_metric': stopper.best_metric,
                'patience_count': stopper.patience_count, 'record': record}
    # The line and the events go first: if the checkpoint is not complete when a kill comes,
    # --resume drops them and runs the epoch again.
    checkpoints.append_metrics(workdir, record)
    event_log.epoch(int(state.step), record,
                    record.get('learning_rate', config.train.learning_rate),
                    passages.after_epoch(config, dataset, optimizer.for_evaluation(state).params))
    checkpoints.save(manager, int(state.step), state, progress, val['loss'])
    logging.info('Epoch %d: train loss %.4f (%.4f bits) accuracy %.4f | val loss %.4f (%.4f '
                 'bits) accuracy %.4f top-5 %.4f | %.0fs%s%s', epoch, train_metrics['loss'],
                 train_metrics['bits'], train_metrics['accuracy'], val['loss'], val['bits'],
                 val['accuracy'], val['top5_accuracy'], record['seconds'],
                 ' (best)' if stopper.has_improved else '',
                 f' | {record["skipped_batches"]} batches skipped' if 'skipped_batches' in record
                 else '')
    _stop_if_asked(manager, stop, int(state.step))
  return state


def _stop_if_asked(manager, stop: preemption.StopRequest, step: int):
  """After a signal: waits until the checkpoint at `step` is written, then ends the run."""
  if stop.requested():
    checkpoints.finish(manager)
    raise stop.stopped(manager.directory / str(step))


def load(workdir: str | Path, which: str | int = 'best') -> tuple[Config, Any, WordRNN, Any]:
  """Rebuilds (config, tokenizer, model, params) from a work dir alone; which: best, latest or
  a checkpoint's step.

  The params are those training scored: the averaged weights, where the run averages them.
  """
  config, tokenizer = checkpoints.read_run(workdir)
  manager = checkpoints.manager(workdir)
  try:
    step = checkpoints.step_of(manager, which)
    target = create_train_state(config, tokenizer.vocab_size)
    state, _ = checkpoints.read_back(manager, step, target)
  finally:
    manager.close()
  params = optimizer.for_evaluation(state).params
  return config, tokenizer, WordRNN(config.model, tokenizer.vocab_size), params
