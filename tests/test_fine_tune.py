"""--init_from: a new run from a trained run's parameters, model and tokenizer, on new text."""

import dataclasses
from pathlib import Path
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.configs import Config, DataConfig, TrainConfig
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.evaluation import evaluate as evaluation
from rnn_jax.training import checkpoints
from rnn_jax.training import fine_tune

from conftest import CYCLE, read_config, read_metrics

REPO = Path(__file__).parents[1]
NEW_WORDS = ('omega', 'sigma')  # words the trained vocabulary lacks


@pytest.fixture(scope='module')
def new_text(tmp_path_factory) -> Path:
  """The cycle walked backwards, with two words the trained model never saw: text no other
  test trains on."""
  rng = np.random.default_rng(1)
  backwards = CYCLE[::-1] + list(NEW_WORDS)
  lines = [' '.join(backwards[(start + i) % len(backwards)] for i in range(30))
           for start in rng.integers(0, len(backwards), size=40)]
  path = tmp_path_factory.mktemp('new_text') / 'backwards.txt'
  path.write_text('\n'.join(lines))
  return path


def fine_tune_config(new_text: Path, source: Path, **train_fields) -> Config:
  """What the flags --data, --init_from and the train fields give, before inheriting."""
  return Config(data=DataConfig(data=str(new_text), training_length=4, min_extra_words=0,
                                near_copy_share=0.0),
                train=TrainConfig(**dict(init_from=str(source), batch_size=64, max_epochs=2)
                                  | train_fields))


def given(*fields: str) -> list[str]:
  """The names of the fields the user set: those of fine_tune_config and `fields`."""
  return ['data', 'training_length', 'min_extra_words', 'near_copy_share', 'init_from',
          'batch_size', 'max_epochs', *fields]


def test_the_run_starts_from_the_trained_parameters_with_its_model_and_tokenizer(
    trained, new_text, tmp_path):
  source, _ = trained
  config = fine_tune.inherit(fine_tune_config(new_text, source, learning_rate=1e-12,
                                              max_epochs=1), given('learning_rate'))
  assert config.model == checkpoints.read_run(source)[0].model
  train.train_and_evaluate(config, tmp_path)
  assert (tmp_path / checkpoints.TOKENIZER).read_text() == (source /
                                                           checkpoints.TOKENIZER).read_text()
  assert read_config(tmp_path)['init_from'] == str(source)
  # A step size of 1e-12 leaves the trained weights where they were.
  for before, after in zip(jax.tree.leaves(train.load(source)[3]),
                           jax.tree.leaves(train.load(tmp_path)[3])):
    np.testing.assert_allclose(after, before, atol=1e-9)


def test_words_outside_the_trained_vocabulary_are_unknown_and_counted(trained, new_text):
  source, _ = trained
  tokenizer = checkpoints.read_run(source)[1]
  dataset = data.prepare(fine_tune_config(new_text, source), tokenizer)
  words = new_text.read_text().split()
  assert dataset.outside_vocabulary == {word: words.count(word) for word in
                                        sorted(NEW_WORDS, key=words.count, reverse=True)}
  assert dataset.summary()['outside_vocabulary_tokens'] == sum(map(words.count, NEW_WORDS))
  unknown = np.concatenate([dataset.train.tokens, dataset.valid.tokens])
  assert np.mean(unknown == tokenizer.unknown_id) == pytest.approx(
      sum(map(words.count, NEW_WORDS)) / len(words), abs=0.02)
  line = fine_tune.describe_outside(dataset.outside_vocabulary)
  assert re.fullmatch(r'2 words of the data \(\d+ occurrences\) are outside the trained '
                      r'vocabulary; most frequent: \w+ \(\d+\), \w+ \(\d+\)', line)


@pytest.mark.parametrize('field, value', [('rnn_units', 16), ('cell', 'gru'), ('lower', True)])
def test_a_flag_that_would_change_the_shape_or_the_vocabulary_is_refused(trained, new_text,
                                                                          field, value):
  source, _ = trained
  config = fine_tune_config(new_text, source)
  config = Config.from_flat(config.flat() | {field: value})
  with pytest.raises(UserError, match=rf'would change its shape or its vocabulary: '
                                      rf'--{field}={value!r} \(.* in {re.escape(str(source))}\)'):
    fine_tune.inherit(config, given(field))


def test_a_named_checkpoint_is_the_one_read_and_a_missing_one_is_refused(trained, tmp_path):
  source, _ = trained
  manager = checkpoints.manager(source)
  steps = manager.all_steps()
  manager.close()
  assert fine_tune.source(f'{source}/checkpoints/{steps[0]}') == (source, steps[0])
  assert fine_tune.source(str(source)) == (source, 'best')
  with pytest.raises(UserError, match=f'holds no checkpoint 99999 \\(it holds {steps[0]}, '):
    train.load(*fine_tune.source(f'{source}/checkpoints/99999'))
  with pytest.raises(UserError, match='is neither a work dir holding a run'):
    fine_tune.source(str(tmp_path))


def run(module: str, *args: str) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, '-m', f'experiments.{module}', *args], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  return result


@pytest.mark.heavy
def test_a_fine_tuned_run_learns_the_new_text_resumes_without_its_source_and_samples(
    trained, new_text, tmp_path):
  reference, _ = trained
  source = tmp_path / 'source'
  shutil.copytree(reference, source)
  workdir = tmp_path / 'fine_tuned'
  flags = [f'--workdir={workdir}', f'--data={new_text}', f'--init_from={source}',
           '--training_length=4', '--min_extra_words=0', '--near_copy_share=0',
           '--batch_size=64', '--learning_rate=0.03', '--dense_dropout=0']
  first = run('train', *flags, '--max_epochs=1')
  assert 'words of the data' in first.stderr and 'omega' in first.stderr
  shutil.rmtree(source)  # the work dir alone resumes it, evaluates and samples
  config, _ = checkpoints.read_run(workdir)
  train.train_and_evaluate(dataclasses.replace(
      config, train=dataclasses.replace(config.train, max_epochs=3)), workdir, resume=True)
  records = read_metrics(workdir)
  assert [record['epoch'] for record in records] == [1, 2, 3]
  assert records[-1]['val_loss'] < records[0]['val_loss']
  assert read_config(workdir)['dense_dropout'] == 0  # a typed training-time field is the run's
  sampled = run('sample', f'--workdir={workdir}', '--num_random_seeds=2', '--num_words=5',
                '--temperature=0')
  backwards = [f'{later} {earlier}' for earlier, later in zip(CYCLE, CYCLE[1:])]
  assert any(pair in sampled.stdout for pair in backwards)  # passages of the new text
  best = min(record['val_loss'] for record in records)
  # The run's own windows, read with its tokenizer.
  assert evaluation.evaluate_run(workdir)['loss'] == pytest.approx(best, abs=1e-6)
