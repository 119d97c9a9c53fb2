"""Scores a trained run on its validation or test windows beside naive and n-gram baselines.

  python -m experiments.evaluate --workdir=DIR --split=test --checkpoint=best --ngram_order=4
      [--mixture] [--cache] [--dynamic]

Prints a table, then the figures as one JSON line (the last line of stdout).
"""

import json

from absl import flags

from experiments import config_flags
from rnn_jax.evaluation import evaluate as evaluation

flags.DEFINE_string('workdir', None, 'The trained run to score.', required=True)
config_flags.define_checkpoint_flag()
# Strings rather than enums, so that a bad value is reported like any other bad input.
flags.DEFINE_string('split', 'valid', "The windows to score: 'valid' or 'test'.")
flags.DEFINE_integer('ngram_order', 4, 'Order of the Kneser-Ney baseline: it reads the last '
                     'ngram_order - 1 tokens of each window.')
flags.DEFINE_bool('mixture', False, "Also score the model's distribution mixed with the "
                  "n-gram's, the mixing weight chosen on validation.")
flags.DEFINE_bool('cache', False, 'Also score the model with a continuous cache over its own '
                  'window (theta and weight chosen on validation), and the n-gram with the same '
                  'cache, every earlier position weighing the same (weight chosen on validation).')
flags.DEFINE_bool('dynamic', False, 'Also score the model adapting to the held-out text as it '
                  'scores it (dynamic evaluation: an SGD step after each block of windows, on '
                  'words already scored; its settings chosen on validation).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  results = evaluation.evaluate_run(FLAGS.workdir, FLAGS.split,
                                    config_flags.checkpoint_from_flags(), FLAGS.ngram_order,
                                    FLAGS.mixture, FLAGS.cache, FLAGS.dynamic)
  print(evaluation.table(results))
  print(json.dumps(results))


if __name__ == '__main__':
  config_flags.run(main)
