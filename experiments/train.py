"""Trains a word-level recurrent language model (LSTM or GRU: --cell).

  python -m experiments.train --flagfile=experiments/configs/seed_trainable.flags --workdir=DIR
"""

from absl import flags
from absl import logging
import jax

from experiments import config_flags
from rnn_jax import train
from rnn_jax.configs import RESUMABLE, Config
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.generation import passages
from rnn_jax.training import checkpoints
from rnn_jax.training import fine_tune
from rnn_jax.training import metrics
from rnn_jax.training import parallel

config_flags.define_config_flags()
config_flags.define_parallel_flags()
flags.adopt_module_key_flags(config_flags)
flags.DEFINE_string('workdir', None, 'Where the config, checkpoints and metrics go.',
                    required=True)
flags.DEFINE_bool('resume', False, 'Continue the run in --workdir from its latest checkpoint.')
flags.DEFINE_bool('overwrite', False, 'Replace a run already in --workdir.')
flags.DEFINE_integer('samples', 0, 'Passages to generate from the best checkpoint at the end.',
                     lower_bound=0)
flags.DEFINE_integer('sample_words', 30, 'Words per generated passage.', lower_bound=1)
flags.DEFINE_float('temperature', 0.75, "Sampling temperature (the walkthrough's diversity).")
flags.register_validator('temperature', lambda t: t > 0, '--temperature must be > 0')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  mesh = config_flags.parallel_from_flags()
  logging.info('JAX %s on %s; mesh %s', jax.__version__, jax.devices(), dict(mesh.mesh.shape))
  config = config_flags.config_from_flags()
  if FLAGS.resume:
    check_resumable(config)
  elif config.train.init_from:
    config = fine_tune.inherit(config, config_flags.typed_config_fields())
  results = train.train_and_evaluate(config, FLAGS.workdir,
                                     resume=FLAGS.resume, overwrite=FLAGS.overwrite,
                                     parallel=mesh)
  if not parallel.is_primary():
    return
  print_standing(results)
  if FLAGS.samples:
    print_samples()


def check_resumable(config: Config):
  """--resume continues a run with its own settings: a typed flag that would change one is
  refused rather than ignored, and so is a work dir with nothing to continue."""
  if not checkpoints.has_run(FLAGS.workdir):
    raise UserError(f'--resume: {FLAGS.workdir} holds no run to continue (no '
                    f'{checkpoints.CONFIG}); leave out --resume to start one')
  saved, given = checkpoints.read_run(FLAGS.workdir)[0].flat(), config.flat()
  changed = [f'--{name} ({saved[name]!r} in the run, {given[name]!r} given)'
             for name in config_flags.typed_config_fields()
             if name not in RESUMABLE and given[name] != saved[name]]
  if changed:
    raise UserError(f'--resume continues the run with its own settings, and these flags would '
                    f'change them: {", ".join(changed)}; leave them out, or start a new run in '
                    f'another --workdir (only --{", --".join(RESUMABLE)} may change)')


def print_standing(results: dict):
  """The best checkpoint beside the Kneser-Ney 4-gram on the same held-out windows."""
  split = 'test' if 'test' in results else 'valid'
  scores = results[split]
  ngram = scores['baselines']
  if 'kneser_ney_loss' not in ngram:
    return
  ratio = metrics.perplexity(scores['loss']) / metrics.perplexity(ngram['kneser_ney_loss'])
  print(f'\nOn the {split} windows, the best epoch ({results["best_epoch"]}) has perplexity '
        f'{metrics.perplexity(scores["loss"]):.1f} and accuracy {scores["accuracy"]:.1%}; the '
        f'Kneser-Ney 4-gram {metrics.perplexity(ngram["kneser_ney_loss"]):.1f} and '
        f'{ngram["kneser_ney_accuracy"]:.1%}: a perplexity {abs(1 - ratio):.0%} '
        f'{"below" if ratio < 1 else "above"} the 4-gram\'s.')


def print_samples():
  config, tokenizer, model, params = train.load(FLAGS.workdir)
  texts = data.prepare_run(config, tokenizer).valid_texts
  shown = passages.continue_random(model, params, tokenizer, texts, config.data.training_length,
                                   FLAGS.samples, FLAGS.sample_words, FLAGS.temperature,
                                   config.seed)
  for seed_text, continuation in shown:
    print(f'\n{seed_text}\n  -> {continuation}')

if __name__ == '__main__':
  config_flags.run(main)
