"""Serves a trained run in the browser: continue a seed text, random passages, human or machine.

  pip install -e '.[serve]'
  python -m experiments.serve --workdir=DIR [--host=127.0.0.1 --port=8000]

Pages at /, /random and /game; JSON at POST /api/generate, GET /api/random, GET /api/health.
Put a reverse proxy in front of it before other machines reach it (docs/reliability.md).
"""

import time

from absl import flags

from experiments import config_flags
from rnn_jax.errors import UserError
from rnn_jax.generation import sampling
from rnn_jax.serve import serving

flags.DEFINE_string('workdir', None, 'The trained run to serve.', required=True)
config_flags.define_checkpoint_flag()
flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on; 0.0.0.0 opens the server to '
                    'other machines.')
flags.DEFINE_integer('port', 8000, 'Port to listen on.', lower_bound=0, upper_bound=65535)
flags.DEFINE_enum('mode', 'window', sampling.MODES, 'How the model reads its context.')
flags.DEFINE_list('batch_sizes', ['1', '4', '8', '16', '32'], 'The batch sizes the generator '
                  'is compiled for: a call pads its rows to the first that fits; the last is the '
                  'most rows one call takes.')
flags.DEFINE_integer('max_words', serving.Limits.max_words, 'The most words a request may ask '
                     'for.', lower_bound=1)
flags.DEFINE_integer('chunk_words', serving.Limits.chunk_words, 'Words per generator call: a '
                     'longer request takes several calls, and others join between them, so none '
                     'waits long behind another.', lower_bound=1)
flags.DEFINE_integer('max_samples', 8, 'The most continuations one request may ask for.',
                     lower_bound=1)
flags.DEFINE_float('batch_wait_ms', 5, 'How long a new request waits for others to share its '
                   'generator call.', lower_bound=0)
flags.DEFINE_bool('micro_batching', True, 'Gather concurrent requests into one generator call; '
                  'false runs each request alone (for comparison).')
flags.DEFINE_float('timeout_s', 5, 'How long a connection may wait for its next request to '
                   "arrive whole, head and body, before it is closed (uvicorn's keep-alive "
                   'default).', lower_bound=0.1)
# A crowd past this is told so at once rather than queue at the generator, and the server's
# file descriptors stay under the usual limit of 1,024.
flags.DEFINE_integer('max_connections', 512, 'Connections (or requests in flight) past which a '
                     'request is answered 503.', lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:  # the optional `serve` extra
    import uvicorn  # pylint: disable=import-outside-toplevel
    from rnn_jax.serve import server  # pylint: disable=import-outside-toplevel
    from rnn_jax.serve import web  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f"the server needs the serve extra (pip install -e '.[serve]'): {e}") from None
  limits = serving.Limits(batch_sizes=_integers('batch_sizes'), max_words=FLAGS.max_words,
                          chunk_words=FLAGS.chunk_words, max_samples=FLAGS.max_samples)
  service = serving.Service(FLAGS.workdir, config_flags.checkpoint_from_flags(), FLAGS.mode,
                            limits, FLAGS.batch_wait_ms / 1000, FLAGS.micro_batching)
  start = time.perf_counter()
  programs = service.warm_up()
  print(f'Compiled {programs} generator programs in {time.perf_counter() - start:.1f} s; '
        f'serving {FLAGS.workdir} (step {service.step}) at http://{FLAGS.host}:{FLAGS.port}/',
        flush=True)
  uvicorn.Server(server.config(web.app(service), FLAGS.host, FLAGS.port,
                              timeout_s=FLAGS.timeout_s,
                              max_connections=FLAGS.max_connections)).run()


def _integers(name: str) -> tuple[int, ...]:
  try:
    return tuple(int(value) for value in FLAGS[name].value)
  except ValueError:
    raise UserError(f'--{name} must be integers separated by commas, got '
                    f'{",".join(FLAGS[name].value)}') from None


if __name__ == '__main__':
  config_flags.run(main, generates=True)
