"""Prints the data figures of a configuration as one JSON line.

  python -m experiments.prepare --flagfile=experiments/configs/seed_trainable.flags
"""

import json

from absl import flags

from experiments import config_flags
from rnn_jax.corpus import data

config_flags.define_config_flags()
flags.adopt_module_key_flags(config_flags)


def main(argv):
  del argv
  dataset = data.prepare(config_flags.config_from_flags())
  print(json.dumps(dataset.summary() | data.leakage(dataset)))


if __name__ == '__main__':
  # Training's flagfiles work here too: the flags only training reads are let through.
  config_flags.run(main, ignores=config_flags.TRAIN_ONLY)
