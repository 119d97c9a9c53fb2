"""Training speed in windows/s: rnn-jax beside plain Flax, Keras 3 and a matmul roofline.

  python -m experiments.bench --flagfile=experiments/configs/seed_trainable.flags [--cell=gru]

On random tokens of the config's shapes, after compilation, each figure times --steps batches
with one sync at the end, the fastest of three passes: rnn-jax's train_step (as configured and
without dropout in its recurrent layers) and eval_step, the input pipeline alone, the model
written plainly with the same cell in Flax linen (`nn.RNN`), and the same cell's Keras 3 layer on
the JAX backend; a cell with no counterpart in `REFERENCES` is refused. The roofline is a
step's matmuls alone, each at the rate its shape runs here now. --smoke: tiny shapes, no corpus,
seconds. The last line is one JSON object. --mesh_shape splits the batches of rnn-jax's two
train figures over that many devices (force CPU devices with JAX_NUM_CPU_DEVICES=N); the other figures use one device.
"""

import dataclasses
import functools
import itertools
import json
import math
import os
import resource
import time
import timeit
from typing import Any, Callable, NamedTuple

from absl import flags
from absl import logging
from flax import linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import config_flags
from rnn_jax import train
from rnn_jax.configs import Config, ModelConfig
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.model import cells
from rnn_jax.model import layers
from rnn_jax.training import metrics
from rnn_jax.training import parallel

config_flags.define_config_flags()
config_flags.define_parallel_flags()
flags.adopt_module_key_flags(config_flags)
flags.DEFINE_integer('steps', 20, 'Batches timed per figure, after compilation.', lower_bound=1)
flags.DEFINE_bool('smoke', False, 'Tiny synthetic shapes, no corpus: checks that all runs.')
flags.DEFINE_bool('keras', True, 'Time Keras 3 on the JAX backend too, where it is installed.')
FLAGS = flags.FLAGS

SMOKE_VOCAB = 300
SMOKE_SHAPES = dict(training_length=8, batch_size=32, embedding_dim=16, rnn_units=16,
                    dense_units=32)
MATMUL_LOOP_FLOPS = 1e9  # work per timed roofline loop, in 10 to 10,000 matmuls
REPEATS = 3  # timed passes per figure; the fastest counts, as the machine may be shared
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, labels, weights


def main(argv):
  del argv
  mesh = config_flags.parallel_from_flags()
  logging.info('JAX %s on %s', jax.__version__, jax.devices())
  config = config_flags.config_from_flags()
  check_comparable(config)
  config, vocab, windows = _setup(config)
  mesh.check_batch_size(config.train.batch_size, 'batch_size')
  batch, length = config.train.batch_size, config.data.training_length
  rng = np.random.default_rng(config.seed)
  batches = [(rng.integers(1, vocab, (batch, length), np.int32),
              rng.integers(1, vocab, batch, np.int32), np.ones(batch, np.float32))
             for _ in range(FLAGS.steps)]
  rates, compile_seconds, peak_rss_mb = _measure(config, vocab, windows, batches, mesh)
  print(f'{"":24} {"windows/s":>12}')
  for name, rate in rates.items():
    print(f'{name:24} {"-" if rate is None else f"{rate:,.0f}":>12}')
  ratio = lambda a, b: None if a is None or b is None else round(a / b, 4)
  results = {f'{name}_windows_per_s': None if rate is None else round(rate, 1)
             for name, rate in rates.items()}
  results |= {'roofline_fraction': ratio(rates['rnn_jax_train'], rates['roofline']),
              'ratio_vs_flax': ratio(rates['rnn_jax_nodropout_train'], rates['flax_train']),
              'ratio_vs_keras': ratio(rates['rnn_jax_train'], rates['keras_train']),
              'eval_over_train': ratio(rates['rnn_jax_eval'], rates['rnn_jax_train']),
              'compile_seconds': round(compile_seconds, 2),
              'peak_rss_mb': round(peak_rss_mb, 1),
              'cell': config.model.cell, 'steps': FLAGS.steps, 'batch_size': batch,
              'training_length': length,
              'vocab_size': vocab, 'smoke': FLAGS.smoke, 'jax': jax.__version__,
              'device': str(jax.devices()[0]), 'mesh': dict(mesh.mesh.shape)}
  print(json.dumps(results))


def _measure(config: Config, vocab: int, windows: data.Windows, batches: list[Batch],
             mesh: parallel.Parallel) -> tuple[dict[str, float | None], float, float]:
  """(windows/s by name, seconds to compile rnn-jax's train step, rnn-jax's peak memory in MB).

  rnn-jax's train steps run on `mesh`, each batch split over it as training does; the other
  figures on one device. The peak is read before the other systems run: the allocator keeps
  what they free.
  """
  train_rate, compile_seconds = _train(train.create_train_state(config, vocab),
                                       train.train_step, batches, mesh)
  no_dropout = dataclasses.replace(config.model, dropout=0.0, recurrent_dropout=0.0)
  no_dropout_state = train.create_train_state(dataclasses.replace(config, model=no_dropout), vocab)
  eval_step = jax.jit(metrics.eval_step)
  rates = {'rnn_jax_train': train_rate,
           'rnn_jax_nodropout_train': _train(no_dropout_state, train.train_step, batches,
                                             mesh)[0],
           'rnn_jax_eval': _windows_per_s(lambda state, batch: (state, eval_step(state, batch)),
                                          train.create_train_state(config, vocab), batches),
           'input_pipeline': _input_pipeline(config, windows)}
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  rates |= {'flax_train': _train(_flax_state(config, vocab), _flax_step, batches)[0],
            'keras_train': _keras_train(config, vocab, batches) if FLAGS.keras else None,
            'roofline': _roofline(config, vocab)}
  return rates, compile_seconds, peak_rss_mb


def _setup(config: Config) -> tuple[Config, int, data.Windows]:
  """The config to time, its vocabulary size and the training windows."""
  if not FLAGS.smoke:
    dataset = data.prepare(config)
    return config, dataset.tokenizer.vocab_size, dataset.train
  config = Config.from_flat(config.flat() | SMOKE_SHAPES)
  sequences = np.random.default_rng(config.seed).integers(1, SMOKE_VOCAB, (64, 40)).tolist()
  return config, SMOKE_VOCAB, data.make_windows(sequences, config.data.training_length)


def _windows_per_s(step, carry, batches: list[Batch]) -> float:
  """`carry, out = step(carry, batch)` over every batch, one sync at the end; best of REPEATS.

  Two untimed calls first: the second one is the first to find the allocator's pages warm.
  """
  for batch in batches[:2]:
    carry, out = step(carry, batch)
  jax.block_until_ready((carry, out))
  best = math.inf
  for _ in range(REPEATS):
    start = time.perf_counter()
    outputs = []
    for batch in batches:
      carry, out = step(carry, batch)
      outputs.append(out)
    jax.block_until_ready((carry, outputs))
    best = min(best, time.perf_counter() - start)
  return sum(len(batch[0]) for batch in batches) / best


def _train(state: train_state.TrainState, step_fn, batches: list[Batch],
           mesh: parallel.Parallel | None = None) -> tuple[float, float]:
  """(windows/s, seconds to compile) of `step_fn(state, batch, key)`, jitted as training runs it,
  on one device or, with `mesh`, with each batch split over it."""
  key = jax.random.key(0)
  place = lambda batch: batch
  if mesh:
    state, key = mesh.place((state, key))
    place = lambda batch: mesh.batch(batch, len(batch[0]))
  start = time.perf_counter()
  step = jax.jit(step_fn, donate_argnums=0).lower(state, place(batches[0]), key).compile()
  compile_seconds = time.perf_counter() - start
  return (_windows_per_s(lambda s, batch: step(s, place(batch), key), state, batches),
          compile_seconds)


def _input_pipeline(config: Config, windows: data.Windows) -> float:
  """data.batches alone (host only), from epoch 1 on, for --steps batches."""
  epochs = (data.batches(windows, config.train.batch_size, seed=config.seed, epoch=epoch)
            for epoch in itertools.count(1))
  batches = itertools.islice(itertools.chain.from_iterable(epochs), FLAGS.steps)
  return FLAGS.steps * config.train.batch_size / timeit.timeit(lambda: list(batches), number=1)


class Reference(NamedTuple):
  """What rnn-jax's cell is timed against: the same cell in Flax linen and in Keras 3."""
  flax_cell: Callable[[int], nn.RNNCellBase]
  flax_h: Callable[[Any], jax.Array]  # the output h of the Flax cell's carry
  keras_layer: str  # the keras.layers class


REFERENCES = {
    'lstm': Reference(nn.OptimizedLSTMCell, lambda carry: carry[1], 'LSTM'),  # carry (c, h)
    'gru': Reference(nn.GRUCell, lambda carry: carry, 'GRU'),  # carry h
}


def check_comparable(config: Config):
  if config.model.cell not in REFERENCES:
    raise UserError(f'experiments.bench has no Flax or Keras counterpart of cell '
                    f'{config.model.cell!r} to time it against: add one to REFERENCES '
                    f'(it knows {", ".join(REFERENCES)})')


class PlainRNN(nn.Module):
  """The model as the Flax examples would write it: linen's cell in nn.RNN, no cell dropout."""
  config: ModelConfig
  vocab_size: int

  @nn.compact
  def __call__(self, tokens: jax.Array, *, deterministic: bool) -> jax.Array:
    cfg = self.config
    reference = REFERENCES[cfg.cell]
    rnn = lambda: nn.RNN(reference.flax_cell(cfg.rnn_units), return_carry=True)
    x = nn.Embed(self.vocab_size, cfg.embedding_dim)(tokens)
    for _ in range(cfg.rnn_layers - 1):
      _, x = rnn()(x)
    if cfg.bidirectional:
      (forward, backward), _ = nn.Bidirectional(rnn(), rnn(), return_carry=True)(x)
      h = jnp.concatenate([reference.flax_h(forward), reference.flax_h(backward)], axis=-1)
    else:
      carry, _ = rnn()(x)
      h = reference.flax_h(carry)
    h = nn.relu(nn.Dense(cfg.dense_units)(h))
    h = nn.Dropout(cfg.dense_dropout)(h, deterministic=deterministic)
    return nn.Dense(self.vocab_size)(h)


def _flax_step(state: train_state.TrainState, batch: Batch, key: jax.Array):
  features, labels, _ = batch

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, features, deterministic=False,
                            rngs={'dropout': jax.random.fold_in(key, state.step)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
  return state.apply_gradients(grads=grads), metrics


def _flax_state(config: Config, vocab: int) -> train_state.TrainState:
  model = PlainRNN(config.model, vocab)
  tokens = jnp.zeros((1, config.data.training_length), jnp.int32)
  params = model.init(jax.random.key(config.seed), tokens, deterministic=True)['params']
  # Keras' Adam epsilon, as rnn-jax uses; optax defaults to 1e-8.
  tx = optax.adam(config.train.learning_rate, eps=1e-7)
  return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _keras_train(config: Config, vocab: int, batches: list[Batch]) -> float | None:
  """Keras 3 on the JAX backend, one fit over the batches after a one-batch fit; None without it."""
  os.environ['KERAS_BACKEND'] = 'jax'
  try:
    import keras  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  cfg = config.model
  layer = getattr(keras.layers, REFERENCES[cfg.cell].keras_layer)
  rnn = lambda **kwargs: layer(cfg.rnn_units, dropout=cfg.dropout,
                               recurrent_dropout=cfg.recurrent_dropout, **kwargs)
  model = keras.Sequential(
      [keras.Input((config.data.training_length,), dtype='int32'),
       keras.layers.Embedding(vocab, cfg.embedding_dim)]
      + [rnn(return_sequences=True) for _ in range(cfg.rnn_layers - 1)]
      + [keras.layers.Bidirectional(rnn()) if cfg.bidirectional else rnn(),
         keras.layers.Dense(cfg.dense_units, activation='relu'),
         keras.layers.Dropout(cfg.dense_dropout),
         keras.layers.Dense(vocab, activation='softmax')])
  model.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate),
                loss='sparse_categorical_crossentropy', metrics=['accuracy'])
  features = np.concatenate([batch[0] for batch in batches])
  labels = np.concatenate([batch[1] for batch in batches])
  fit = lambda n: model.fit(features[:n], labels[:n], batch_size=config.train.batch_size,
                            epochs=1, shuffle=False, verbose=0)
  fit(config.train.batch_size)
  return len(features) / min(timeit.repeat(lambda: fit(len(features)), number=1,
                                            repeat=REPEATS))


def _matmuls(config: Config, vocab: int) -> list[tuple[str, int, tuple[int, int, int]]]:
  """(name, times per step, (m, k, n)) of every m x k by k x n matmul of a training step."""
  cfg, batch, length = config.model, config.train.batch_size, config.data.training_length
  gates = cells.CELLS[cfg.cell](cfg.rnn_units).width
  widths = [cfg.embedding_dim] + [cfg.rnn_units] * cfg.rnn_layers
  names = [(f'{cfg.cell}_{i}', widths[i]) for i in range(cfg.rnn_layers)]
  names += [(f'{names[-1][0]}_reverse', names[-1][1])] if cfg.bidirectional else []
  forward = [product for name, width in names for product in (
      (f'{name} input', 1, (batch * length, width, gates)),
      (f'{name} recurrent', length, (batch, cfg.rnn_units, gates)))]
  forward += [('dense', 1, (batch, (1 + cfg.bidirectional) * cfg.rnn_units, cfg.dense_units)),
              ('logits', 1, (batch, cfg.dense_units, vocab))]
  # y = x @ w (m x k by k x n) costs dx = dy @ w.T and dw = x.T @ dy in the backward pass.
  return [product for name, count, (m, k, n) in forward for product in (
      (name, count, (m, k, n)), (f'{name} dx', count, (m, n, k)), (f'{name} dw', count, (k, m, n)))]


@functools.cache
def _matmul_flops_per_s(m: int, k: int, n: int, dtype: str) -> float:
  """A matmul of this shape (operands in dtype, float32 sums), repeated in one compiled loop: the
  best of a few calls."""
  flops = 2 * m * k * n
  # Enough matmuls that the call's own overhead vanishes, as it does inside a training step.
  iterations = min(10_000, max(10, math.ceil(MATMUL_LOOP_FLOPS / flops)))
  a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)

  def body(i, carry):
    a, b, _ = carry
    # One element of the input takes the index, in place: XLA cannot hoist the matmul out of the
    # loop, and the loop reuses its buffers where a lone call would allocate its output.
    a = a.at[0, 0].set(i.astype(a.dtype))
    return a, b, layers.matmul(a, b, a.dtype)

  loop = jax.jit(lambda a, b: jax.lax.fori_loop(0, iterations, body, (a, b, jnp.zeros((m, n)))))
  jax.block_until_ready(loop(a, b))
  # The fastest of three calls: the machine may be shared.
  seconds = min(timeit.repeat(lambda: jax.block_until_ready(loop(a, b)), number=1, repeat=3))
  return flops * iterations / seconds


def _roofline(config: Config, vocab: int) -> float:
  """Windows/s if a step took only its matmuls, each at its measured rate; prints them."""
  seconds = 0.0
  print(f'{"matmul":28} {"shape (m x k by k x n)":>24} {"times":>6} {"GFLOP/step":>11} '
        f'{"GFLOP/s":>9} {"ms/step":>9}')
  for name, count, shape in _matmuls(config, vocab):
    flops = 2 * math.prod(shape) * count
    # compute_dtype reaches the input projections and the logits; the rest stays float32.
    low = name.startswith('logits') or ' input' in name
    rate = _matmul_flops_per_s(*shape, config.model.compute_dtype if low else 'float32')
    seconds += flops / rate
    m, k, n = shape
    print(f'{name:28} {f"{m} x {k} by {k} x {n}":>24} {count:>6} {flops / 1e9:>11.4g} '
          f'{rate / 1e9:>9.1f} {flops / rate * 1e3:>9.3f}')
  return config.train.batch_size / seconds


if __name__ == '__main__':
  config_flags.run(main)
