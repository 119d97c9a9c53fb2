"""Fine-tuning: a new run that starts from a trained run's parameters, model and tokenizer.

`init_from` names the trained run's work dir (its best checkpoint) or one of its checkpoints,
WORKDIR/checkpoints/N. The new run reads its own data with the old tokenizer: words the old
vocabulary lacks are read as it reads unknown words, and counted. The optimizer, schedule, early
stopping and data split are the new run's own. Its work dir records `init_from` and the
tokenizer, so it resumes, samples, evaluates and serves without the old run.
"""

from collections.abc import Iterable
import dataclasses
from pathlib import Path

from rnn_jax.configs import Config, ModelConfig
from rnn_jax.corpus import text
from rnn_jax.errors import UserError
from rnn_jax.training import checkpoints

# What the parameters' shapes or the token ids depend on: fixed by the trained run.
SHAPE_FIELDS = ('cell', 'embedding_dim', 'rnn_layers', 'rnn_units', 'bidirectional',
                'dense_units', 'tie_embeddings', 'pretrained_embeddings')
TOKENIZER_FIELDS = ('level', 'filters', 'lower', 'num_words', 'min_count')
# Taken from the trained run unless given: its whole model, its tokenizer and its window.
INHERITED = (tuple(field.name for field in dataclasses.fields(ModelConfig)) + TOKENIZER_FIELDS
             + ('training_length',))


def source(init_from: str) -> tuple[Path, str | int]:
  """(work dir, 'best' or a step) that `init_from` names."""
  path = Path(init_from)
  if path.parent.name == checkpoints.CHECKPOINTS and path.name.isdigit():
    path, which = path.parent.parent, int(path.name)
  else:
    which = 'best'
  if not checkpoints.has_run(path):
    raise UserError(f'--init_from: {init_from} is neither a work dir holding a run (no '
                    f'{checkpoints.CONFIG}) nor one of its checkpoints (WORKDIR/'
                    f'{checkpoints.CHECKPOINTS}/N)')
  return path, which


def inherit(config: Config, given: Iterable[str]) -> Config:
  """`config` with the trained run's model, tokenizer and window in place of every such field
  not among the `given` names (those the user set); a given one that would change a shape or
  the token ids is refused."""
  trained = checkpoints.read_run(source(config.train.init_from)[0])[0].flat()
  given = set(given)
  inherited = {name: trained[name] for name in INHERITED if name not in given}
  merged = Config.from_flat(config.flat() | inherited)
  check(merged)
  return merged


def check(config: Config):
  """Refuses, in one line naming them, the fields whose value differs from the trained run's
  where that would change the parameters' shapes or the token ids."""
  trained = checkpoints.read_run(source(config.train.init_from)[0])[0].flat()
  flat = config.flat()
  changed = [f'--{name}={flat[name]!r} ({trained[name]!r} in {config.train.init_from})'
             for name in SHAPE_FIELDS + TOKENIZER_FIELDS if flat[name] != trained[name]]
  if changed:
    raise UserError(f'--init_from starts from the trained model as it is, and these flags would '
                    f'change its shape or its vocabulary: {", ".join(changed)}; leave them out')


def tokenizer(workdir: Path, config: Config, resume: bool) -> text.Tokenizer | None:
  """The tokenizer a run reads its data with: None (fitted to the data) but for fine-tuning,
  where it is the trained run's, or once saved, the run's own copy of it."""
  if not config.train.init_from:
    return None
  if resume and checkpoints.has_run(workdir):
    return checkpoints.read_run(workdir)[1]
  check(config)
  return checkpoints.read_run(source(config.train.init_from)[0])[1]


def describe_outside(outside: dict[str, int], shown: int = 10) -> str:
  """One line: how many words of the data the trained vocabulary lacks, the most frequent."""
  if not outside:
    return 'every word of the data is in the trained vocabulary'
  total = sum(outside.values())
  frequent = ', '.join(f'{word} ({count:,})' for word, count in list(outside.items())[:shown])
  return (f'{len(outside):,} words of the data ({total:,} occurrences) are outside the trained '
          f'vocabulary; most frequent: {frequent}')
