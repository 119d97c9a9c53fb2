"""Flagfiles: includes found next to the file that names them, from any directory."""

import os
from pathlib import Path
import subprocess
import sys

import pytest

from experiments import config_flags
from rnn_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_an_include_is_found_next_to_the_file_that_names_it(tmp_path, monkeypatch):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'base.flags').write_text('# the base\n--rnn_units=7\n--split=windows\n')
  (tmp_path / 'sub' / 'top.flags').write_text('--flagfile=base.flags\n\n--rnn_units=9\n')
  monkeypatch.chdir(tmp_path)
  assert config_flags.expand_flagfiles(['prog', '--flagfile=sub/top.flags', '--seed=3']) == [
      'prog', '--rnn_units=7', '--split=windows', '--rnn_units=9', '--seed=3']


def test_shipped_flagfiles_are_found_by_name_and_missing_ones_are_named(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert '--rnn_layers=2' in config_flags.expand_flagfiles(['--flagfile=seed_2_layers.flags'])
  with pytest.raises(UserError, match='flagfile not found: nope.flags'):
    config_flags.expand_flagfiles(['--flagfile=nope.flags'])


def test_flagfiles_that_include_each_other_are_refused(tmp_path):
  (tmp_path / 'a.flags').write_text('--flagfile=b.flags\n')
  (tmp_path / 'b.flags').write_text('--flagfile=a.flags\n')
  with pytest.raises(UserError, match='loop'):
    config_flags.expand_flagfiles([f'--flagfile={tmp_path / "a.flags"}'])


def test_a_nested_flagfile_works_from_another_directory(tmp_path):
  data_file = tmp_path / 'docs.txt'
  data_file.write_text('\n'.join(f'word{i % 7} ' * 30 for i in range(20)))
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.prepare',
       f'--flagfile={REPO / "experiments/configs/seed_2_layers.flags"}', f'--data={data_file}',
       '--training_length=5'],
      cwd=tmp_path, env=os.environ | {'PYTHONPATH': str(REPO)}, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert '"num_texts": 20' in result.stdout


def test_prepare_reads_a_training_flagfile_with_flags_only_training_knows(tmp_path):
  data_file = tmp_path / 'docs.txt'
  lines = (' '.join(f'w{(i * j) % 11}' for j in range(90)) for i in range(20))
  data_file.write_text('\n'.join(lines))
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.prepare', '--flagfile=quickstart.flags',
       f'--data={data_file}'],
      cwd=tmp_path, env=os.environ | {'PYTHONPATH': str(REPO)}, capture_output=True, text=True)
  assert '--samples' in (REPO / 'experiments/configs/quickstart.flags').read_text()
  assert result.returncode == 0, result.stderr
  assert '"num_texts": 20' in result.stdout


def test_a_renamed_flag_names_its_new_name_on_one_line(tmp_path):
  (tmp_path / 'old.flags').write_text('--lstm_units=32\n')
  result = subprocess.run([sys.executable, '-m', 'experiments.train', f'--workdir={tmp_path}',
                           f'--flagfile={tmp_path / "old.flags"}'], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == ['error: --lstm_units is now --rnn_units']
  assert list(tmp_path.iterdir()) == [tmp_path / 'old.flags']  # nothing written
