"""The benchmark entry point, run as a user runs it, on its tiny synthetic shapes."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).parents[1]
RATES = ('rnn_jax_train', 'rnn_jax_nodropout_train', 'flax_train', 'rnn_jax_eval',
         'input_pipeline', 'roofline')
KEYS = ('keras_train_windows_per_s', 'roofline_fraction', 'ratio_vs_flax', 'ratio_vs_keras',
        'compile_seconds', 'peak_rss_mb', 'steps', 'batch_size', 'training_length', 'vocab_size',
        'jax', 'device', 'eval_over_train')


@pytest.mark.heavy
def test_smoke_run_reports_every_figure_as_one_json_line():
  # The LSTM's only: a GRU's run differs in the cell alone (`REFERENCES`), and each costs 20 s
  # of compiling. docs/speed.md has the GRU's figures.
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.bench', '--smoke', '--steps=2', '--keras=false'],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  # jax's probe for a TPU logs its absence on every start: noise the entry points silence.
  assert 'Unable to initialize backend' not in result.stderr
  figures = json.loads(result.stdout.splitlines()[-1])
  assert figures['cell'] == 'lstm'
  rates = {name: figures[f'{name}_windows_per_s'] for name in RATES}
  assert not set(KEYS) - set(figures)
  assert all(isinstance(rate, float) and rate > 0 for rate in rates.values()), rates
  assert figures['keras_train_windows_per_s'] is None and figures['ratio_vs_keras'] is None
  assert figures['ratio_vs_flax'] == pytest.approx(
      rates['rnn_jax_nodropout_train'] / rates['flax_train'], rel=1e-3)


def test_a_cell_without_a_flax_or_keras_counterpart_is_refused_before_anything_is_timed():
  """A fork's new cell (here a second name for the GRU) has nothing to be compared with."""
  script = ("from rnn_jax.model import cells; cells.CELLS['mine'] = cells.CELLS['gru']; "
            "import runpy, sys; sys.argv = ['bench', '--smoke', '--cell=mine']; "
            "runpy.run_module('experiments.bench', run_name='__main__')")
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                          text=True)
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.strip().splitlines()[-1:] == [
      "error: experiments.bench has no Flax or Keras counterpart of cell 'mine' to time it "
      'against: add one to REFERENCES (it knows lstm, gru)']
