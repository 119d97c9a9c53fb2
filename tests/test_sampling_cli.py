"""The sample and game entry points, run as a user runs them, on the tiny trained run."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

from conftest import CYCLE
from conftest import read_config

REPO = Path(__file__).parents[1]


def run(module: str, *args: str, stdin: str = '') -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', f'experiments.{module}', *args], cwd=REPO,
                        input=stdin, capture_output=True, text=True)


def test_sample_continues_seed_texts_and_writes_jsonl(trained, tmp_path):
  workdir, _ = trained
  output = tmp_path / 'samples.jsonl'
  result = run('sample', f'--workdir={workdir}', '--seed_text=alpha beta gamma delta',
               '--seed_text=delta epsilon zeta UNKNOWN eta', '--num_samples=2', '--num_words=6',
               '--temperature=0.05', f'--output={output}')
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert [(r['seed_index'], r['sample_index']) for r in records] == [
      (0, 0), (0, 1), (1, 0), (1, 1)]
  assert records[0]['seed'] == 'alpha beta gamma delta'
  assert records[0]['generated'].split() == (CYCLE * 2)[4:10]
  assert records[2]['generated'].split() == (CYCLE * 2)[7:13]
  assert records[2]['unknown_words'] == ['UNKNOWN']
  assert all(r['temperature'] == 0.05 and r['mean_logprob'] < 0 for r in records)
  assert 'actual' not in records[0]
  assert '(not in the vocabulary, left out: UNKNOWN)' in result.stdout
  assert '... alpha beta gamma delta || epsilon zeta' in result.stdout


def test_sample_shows_the_actual_continuation_of_random_passages(trained, tmp_path):
  workdir, _ = trained
  output = tmp_path / 'samples.jsonl'
  result = run('sample', f'--workdir={workdir}', '--num_random_seeds=3', '--num_words=5',
               '--beam_width=2', f'--output={output}')
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(records) == 3
  for record in records:
    # The cycle is deterministic: a good model's likeliest continuation is the real one.
    assert record['generated'] == record['actual']
    assert record['temperature'] is None
  assert result.stdout.count('actual:') == 3


@pytest.mark.parametrize('args, message', [
    (['--seed_text=nothing known', '--num_random_seeds=2'],
     'give --seed_text or --num_random_seeds, not both'),
    (['--seed_text=nothing known'],
     "the seed text 'nothing known' leaves no word to start from (not in the vocabulary: "
     'nothing, known)'),
    (['--beam_width=3', '--num_samples=2'],
     'beam search finds one continuation per seed: use --num_samples=1'),
    (['--beam_width=3', '--top_k=5'], 'beam search draws nothing: top_k and top_p do not apply'),
])
def test_sample_reports_bad_input_on_one_line(trained, args, message):
  workdir, _ = trained
  result = run('sample', f'--workdir={workdir}', *args)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {message}')
  assert 'Traceback' not in result.stderr


@pytest.mark.heavy
def test_window_and_stateful_sampling_agree_for_a_seed_shorter_than_the_window(trained,
                                                                               tmp_path):
  """Window mode (the default) skips the left padding of a 1-word seed: while the window of 4
  holds the context, its words and their log-probabilities are stateful mode's, same keys."""
  workdir, _ = trained
  records = []
  for mode in ('window', 'stateful'):
    output = tmp_path / f'{mode}.jsonl'
    result = run('sample', f'--workdir={workdir}', '--seed_text=gamma', '--num_words=4',
                 '--num_samples=4', '--temperature=2', '--rng_seed=3', f'--mode={mode}',
                 f'--output={output}')
    assert result.returncode == 0, result.stderr
    records.append([json.loads(line) for line in output.read_text().splitlines()])
  assert len(records[0]) == 4
  for window, stateful in zip(*records):
    assert window['generated'] == stateful['generated']
    assert window['mean_logprob'] == pytest.approx(stateful['mean_logprob'], abs=1e-6)


def test_activations_names_the_cell_and_its_units(trained):
  workdir, _ = trained
  cell = read_config(workdir)['cell']
  result = run('activations', f'--workdir={workdir}', '--text=alpha beta gamma', '--noheatmap',
               '--top_units=2')
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0] == (
      f'The 2 most active of the 8 units of {cell} layer 1 (largest |h|) after each word:')


def test_game_plays_through_stdin(trained):
  workdir, _ = trained
  result = run('game', f'--workdir={workdir}', '--rounds=2', '--num_words=8', '--rng_seed=5',
               stdin='4\n1\n2\n')
  assert result.returncode == 0, result.stderr
  assert result.stdout.count('Which one did a person write? [1-3]:') == 3
  assert 'Please answer with a number from 1 to 3.' in result.stdout
  assert result.stdout.count('Score: ') == 2
  assert 'Final score:' in result.stdout and 'of 2 rounds.' in result.stdout
