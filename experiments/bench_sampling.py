"""Generated tokens per second: the batched generator beside the walkthrough's loop and a ceiling.

  python -m experiments.bench_sampling --workdir=DIR

For each batch size and mode, one compiled call generates --num_words tokens per sequence
(temperature sampling over the whole vocabulary, or the --top_k, --top_p or --beam_width given);
the median of --repeats timed calls after compilation counts. Beside it:
  naive    the walkthrough's way: one sequence, the jitted model called once per token on its
           last window, the draw made on the host with NumPy.
  ceiling  the output layer's matmul alone (batch x dense_units by dense_units x vocabulary) at
           the same batch, --num_words times in one compiled loop, timed in the same run: every
           generator runs it once per token, so none can beat it.
The last line is one JSON object with every figure.
"""

import json
import platform
import statistics
import time

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import config_flags
from rnn_jax import train
from rnn_jax.generation import sampling
from rnn_jax.model import word_rnn

flags.DEFINE_string('workdir', None, 'The trained run whose model and shapes to time.',
                    required=True)
flags.DEFINE_list('batch_sizes', ['1', '64', '1024'], 'Sequences generated at once.')
flags.DEFINE_integer('num_words', 32, 'Tokens per sequence in each timed call.', lower_bound=1)
flags.DEFINE_integer('naive_words', 100, 'Tokens the naive loop generates.', lower_bound=1)
flags.DEFINE_integer('repeats', 3, 'Timed calls per figure (the median counts).', lower_bound=1)
flags.DEFINE_float('temperature', 0.75, 'Sampling temperature.', lower_bound=0)
flags.DEFINE_integer('top_k', 0, 'Time top-k sampling (the naive loop stays plain).', lower_bound=0)
flags.DEFINE_float('top_p', 1.0, 'Time nucleus sampling.', lower_bound=0, upper_bound=1)
flags.DEFINE_integer('beam_width', 1, 'Time beam search of this width.', lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.info('JAX %s on %s', jax.__version__, jax.devices())
  config, _, model, params = train.load(FLAGS.workdir)
  vocab, length = model.vocab_size, config.data.training_length
  rng = np.random.default_rng(0)
  results = {'naive_tokens_per_s': _naive(model, params, rng.integers(1, vocab, length))}
  print(f'naive loop (batch 1, host draw): {results["naive_tokens_per_s"]:,.0f} tokens/s')
  print(f'{"batch":>6} {"window":>12} {"stateful":>12} {"ceiling":>12}   tokens/s')
  for batch in map(int, FLAGS.batch_sizes):
    prompts = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    for mode in sampling.MODES:
      results[f'{mode}_b{batch}_tokens_per_s'] = _generator(model, params, prompts, mode)
    results[f'ceiling_b{batch}_tokens_per_s'] = _ceiling(params, batch)
    print(f'{batch:>6} ' + ' '.join(f'{results[f"{name}_b{batch}_tokens_per_s"]:>12,.0f}'
                                    for name in ('window', 'stateful', 'ceiling')))
  results = {k: round(v, 1) for k, v in results.items()}
  largest = max(map(int, FLAGS.batch_sizes))
  stateful = results[f'stateful_b{largest}_tokens_per_s']
  results[f'stateful_b{largest}_share_of_ceiling'] = round(
      stateful / results[f'ceiling_b{largest}_tokens_per_s'], 3)
  results[f'stateful_b{largest}_over_naive'] = round(stateful / results['naive_tokens_per_s'], 1)
  results |= {'top_k': FLAGS.top_k, 'top_p': FLAGS.top_p, 'beam_width': FLAGS.beam_width,
              'vocab_size': vocab, 'training_length': length, 'num_words': FLAGS.num_words,
              'jax': jax.__version__, 'device': str(jax.devices()[0]),
              'machine': platform.processor() or platform.machine()}
  print(json.dumps(results))


def _median_seconds(run) -> float:
  """Median wall time of `run` over --repeats calls, after one untimed call that compiles."""
  run()
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _generator(model, params, prompts: np.ndarray, mode: str) -> float:
  decoding = sampling.Decoding(mode, FLAGS.top_k, FLAGS.top_p, FLAGS.beam_width)
  key = jax.random.key(0)
  seconds = _median_seconds(lambda: sampling.generate(
      model, params, prompts, key, FLAGS.num_words, FLAGS.temperature,
      decoding).tokens.block_until_ready())
  return len(prompts) * FLAGS.num_words / seconds


def _naive(model, params, prompt: np.ndarray) -> float:
  predict = jax.jit(lambda window: jax.nn.softmax(
      model.apply({'params': params}, window, deterministic=True)[0]))
  rng = np.random.default_rng(0)

  def run():
    window = list(prompt)
    for _ in range(FLAGS.naive_words):
      probs = np.asarray(predict(jnp.asarray([window], jnp.int32)), np.float64)
      probs = np.exp(np.log(probs) / FLAGS.temperature)
      window = window[1:] + [int(np.argmax(rng.multinomial(1, probs / probs.sum())))]

  return FLAGS.naive_words / _median_seconds(run)


def _ceiling(params, batch: int) -> float:
  """--num_words output-layer matmuls in one compiled loop, as the generator runs them."""
  kernel = word_rnn.output_kernel(params)
  hidden = jnp.ones((batch, kernel.shape[0]), kernel.dtype)

  @jax.jit
  def matmuls(hidden, kernel):
    # Each input differs, so XLA cannot hoist the matmul out of the loop.
    return jax.lax.fori_loop(0, FLAGS.num_words, lambda i, _: (hidden + i) @ kernel,
                             jnp.zeros((batch, kernel.shape[1]), kernel.dtype))

  seconds = _median_seconds(lambda: matmuls(hidden, kernel).block_until_ready())
  return batch * FLAGS.num_words / seconds

if __name__ == '__main__':
  config_flags.run(main, generates=True)
