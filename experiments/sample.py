"""Writes text with a trained run: continuations of your seed texts or of random passages.

  python -m experiments.sample --workdir=DIR --seed_text='A neural network' --num_samples=3
  python -m experiments.sample --workdir=DIR --num_random_seeds=4 --mode=stateful --output=s.jsonl
"""

import dataclasses
import json
import os
from pathlib import Path

from absl import flags
import jax
import numpy as np

from experiments import config_flags
from rnn_jax import train
from rnn_jax.corpus import data
from rnn_jax.corpus import seeds
from rnn_jax.errors import UserError
from rnn_jax.generation import sampling

flags.DEFINE_string('workdir', None, 'The trained run to sample from.', required=True)
config_flags.define_checkpoint_flag()
flags.DEFINE_multi_string('seed_text', [], 'Text to continue; repeat the flag for several seeds.')
flags.DEFINE_integer('num_random_seeds', 0, 'Continue this many random passages of the '
                     'validation texts (of every text for runs split by windows); 3 when no '
                     '--seed_text is given.', lower_bound=0, upper_bound=config_flags.MAX_ROWS)
flags.DEFINE_integer('num_words', 50, 'Words (characters at level char) to generate per sample, '
                     f'at most {config_flags.MAX_WORDS:,}.', lower_bound=1,
                     upper_bound=config_flags.MAX_WORDS)
flags.DEFINE_integer('num_samples', 1, 'Samples per seed; seeds x samples x beam width at most '
                     f'{config_flags.MAX_ROWS:,}.', lower_bound=1,
                     upper_bound=config_flags.MAX_ROWS)
flags.DEFINE_float('temperature', 0.75, "The walkthrough's diversity: logits / T; 0 is greedy.",
                   lower_bound=0)
flags.DEFINE_integer('top_k', 0, 'Draw among the k likeliest words; 0 = all.', lower_bound=0)
flags.DEFINE_float('top_p', 1.0, 'Draw among the fewest likeliest words holding this '
                   'probability (nucleus sampling).', lower_bound=0, upper_bound=1)
flags.DEFINE_integer('beam_width', 1, 'Above 1: beam search for the likeliest continuation.',
                     lower_bound=1)
flags.DEFINE_enum('mode', 'window', sampling.MODES, "'window' re-reads the last training_length "
                  "words for every new one (the walkthrough's way); 'stateful' reads the seed "
                  'once and carries the recurrent state: constant work per word, unbounded '
                  'context.')
flags.DEFINE_integer('rng_seed', 0, 'Seeds the choice of passages and the draws.', lower_bound=0,
                     upper_bound=config_flags.MAX_RNG_SEED)
flags.DEFINE_string('output', None, 'Also write one JSON object per sample to this file.')
FLAGS = flags.FLAGS
RANDOM_SEEDS_DEFAULT = 3
SEED_TAIL_WORDS = 6  # words of the seed repeated before each continuation


def main(argv):
  del argv
  decoding = sampling.Decoding(FLAGS.mode, FLAGS.top_k, FLAGS.top_p, FLAGS.beam_width)
  if FLAGS.beam_width > 1 and FLAGS.num_samples > 1:
    raise UserError('beam search finds one continuation per seed: use --num_samples=1')
  output = FLAGS.output and _writable(Path(FLAGS.output))
  config, tokenizer, model, params = train.load(FLAGS.workdir, config_flags.checkpoint_from_flags())
  decoding = dataclasses.replace(decoding, unknown_id=tokenizer.unknown_id)
  seed_list = _seeds(config, tokenizer)
  rows = len(seed_list) * FLAGS.num_samples * FLAGS.beam_width
  if rows > config_flags.MAX_ROWS:
    raise UserError(f'{len(seed_list)} seeds x {FLAGS.num_samples} samples x beam width '
                    f'{FLAGS.beam_width} is {rows:,} continuations, more than the '
                    f'{config_flags.MAX_ROWS:,} one command generates: split them over commands')
  generated = sampling.continue_seeds(
      model, params, seed_list, config.data.training_length, jax.random.key(FLAGS.rng_seed),
      FLAGS.num_words, FLAGS.temperature, decoding, FLAGS.num_samples)
  records = _records(seed_list, generated, tokenizer, beam=FLAGS.beam_width > 1)
  _print(records)
  if output:
    _write_jsonl(output, records)


def _seeds(config, tokenizer) -> list[seeds.Seed]:
  if FLAGS.seed_text and FLAGS.num_random_seeds:
    raise UserError('give --seed_text or --num_random_seeds, not both')
  if FLAGS.seed_text:
    return [seeds.from_text(seed_text, tokenizer) for seed_text in FLAGS.seed_text]
  texts = data.prepare_run(config, tokenizer).valid_texts
  return seeds.random_passages(texts, config.data.training_length,
                               FLAGS.num_random_seeds or RANDOM_SEEDS_DEFAULT, FLAGS.num_words,
                               np.random.default_rng(FLAGS.rng_seed))


def _records(seed_list, generated, tokenizer, *, beam: bool) -> list[dict]:
  tokens, log_probs = np.asarray(generated.tokens), np.asarray(generated.log_probs)
  records = []
  for row, (own_tokens, own_log_probs) in enumerate(zip(tokens, log_probs)):
    seed = seed_list[row // FLAGS.num_samples]
    record = {'seed': seeds.show(tokenizer, seed.tokens),
              'generated': seeds.show(tokenizer, own_tokens),
              'temperature': None if beam else FLAGS.temperature,
              'mean_logprob': round(float(own_log_probs.mean()), 4),
              'seed_index': row // FLAGS.num_samples, 'sample_index': row % FLAGS.num_samples}
    if seed.actual is not None:
      record['actual'] = seeds.show(tokenizer, seed.actual)
    if seed.unknown:
      record['unknown_words'] = seed.unknown
    records.append(record)
  return records


def _print(records: list[dict]):
  how = 'beam search' if FLAGS.beam_width > 1 else f'temperature {FLAGS.temperature:g}'
  for record in records:
    if record['sample_index'] == 0:
      print(f'\nSeed {record["seed_index"] + 1}: {record["seed"]}')
      if 'unknown_words' in record:
        print(f'  (not in the vocabulary, left out: {", ".join(record["unknown_words"])})')
      tail = '... ' + ' '.join(record['seed'].split()[-SEED_TAIL_WORDS:]) + ' ||'
    print(f'  generated ({how}, {FLAGS.mode}, mean log-prob {record["mean_logprob"]:.2f}):\n'
          f'    {tail} {record["generated"]}')
    if 'actual' in record and record['sample_index'] == FLAGS.num_samples - 1:
      print(f'  actual:\n    {tail} {record["actual"]}')


def _writable(path: Path) -> Path:
  """`path`, refused before the work when it could never be written."""
  if path.is_dir():
    raise UserError(f'--output={path} is a directory: name a file')
  if not path.parent.is_dir():
    raise UserError(f'--output={path}: no directory {path.parent}')
  return path


def _write_jsonl(path: Path, records: list[dict]):
  """Writes all or nothing: a partial file never replaces a good one."""
  partial = path.with_name(path.name + '.part')
  try:
    partial.write_text(''.join(json.dumps(r) + '\n' for r in records))
    os.replace(partial, path)
  except OSError as e:
    partial.unlink(missing_ok=True)
    raise UserError(f'cannot write {path}: {e.strerror}') from None
  print(f'\nWrote {len(records)} samples to {path}')


if __name__ == '__main__':
  config_flags.run(main, generates=True)
