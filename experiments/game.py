"""Human or machine: guess which of three continuations of a passage a person wrote.

  python -m experiments.game --workdir=DIR --rounds=5
  printf '1\n3\n' | python -m experiments.game --workdir=DIR --rounds=2 --rng_seed=7
"""

import secrets
import sys

from absl import flags

from experiments import config_flags
from rnn_jax import train
from rnn_jax.corpus import data
from rnn_jax.generation import sampling
from rnn_jax.serve import game

flags.DEFINE_string('workdir', None, 'The trained run that writes the machine continuations.',
                    required=True)
config_flags.define_checkpoint_flag()
flags.DEFINE_integer('rounds', 5, 'Rounds to play.', lower_bound=1,
                     upper_bound=config_flags.MAX_ROWS // 2)
flags.DEFINE_integer('num_words', 50, 'Words (characters at level char) per continuation '
                     '(fewer near the end of a text).', lower_bound=1,
                     upper_bound=config_flags.MAX_WORDS)
flags.DEFINE_enum('mode', 'window', sampling.MODES, 'How the machine reads its context.')
flags.DEFINE_integer('rng_seed', None, 'Replays a game; by default every game is new.',
                     lower_bound=0, upper_bound=config_flags.MAX_RNG_SEED)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  rng_seed = secrets.randbelow(2**31) if FLAGS.rng_seed is None else FLAGS.rng_seed
  config, tokenizer, model, params = train.load(FLAGS.workdir, config_flags.checkpoint_from_flags())
  texts = data.prepare_run(config, tokenizer).valid_texts
  rounds = game.make_rounds(model, params, tokenizer, texts, config.data.training_length,
                            FLAGS.rounds, FLAGS.num_words, rng_seed,
                            sampling.Decoding(FLAGS.mode, unknown_id=tokenizer.unknown_id))
  print(f'Human or machine? Two of three continuations are generated (--rng_seed={rng_seed} '
        'replays this game).')
  game.play(rounds, _answers(), _say)


def _answers():
  """Lines of stdin; answers piped in are echoed, so a scripted game reads like a played one."""
  for line in iter(sys.stdin.readline, ''):
    if not sys.stdin.isatty():
      print(line.strip())
    yield line


def _say(message: str):
  print(message, end='', flush=True)


if __name__ == '__main__':
  config_flags.run(main, generates=True)
