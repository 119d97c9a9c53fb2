"""The metrics plot: drawn from a hand-written metrics.jsonl, in-process and as a user runs it."""

import builtins
import json
from pathlib import Path
import subprocess
import sys

import pytest

from experiments import plot
from rnn_jax.errors import UserError
from rnn_jax.training import checkpoints

REPO = Path(__file__).parents[1]
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Three epochs with the keys rnn_jax.train writes.
RECORDS = [
    {'epoch': 1, 'train_loss': 6.18, 'train_accuracy': 0.109, 'val_loss': 5.66,
     'val_accuracy': 0.166, 'val_top5_accuracy': 0.340, 'seconds': 66.12},
    {'epoch': 2, 'train_loss': 5.52, 'train_accuracy': 0.178, 'val_loss': 5.37,
     'val_accuracy': 0.203, 'val_top5_accuracy': 0.382, 'seconds': 62.28},
    {'epoch': 3, 'train_loss': 5.21, 'train_accuracy': 0.205, 'val_loss': 5.28,
     'val_accuracy': 0.214, 'val_top5_accuracy': 0.397, 'seconds': 61.90},
]


def write_metrics(workdir: Path, lines: list[str]) -> Path:
  workdir.mkdir(exist_ok=True)
  (workdir / checkpoints.METRICS).write_text(''.join(line + '\n' for line in lines))
  return workdir


@pytest.fixture
def workdir(tmp_path) -> Path:
  return write_metrics(tmp_path / 'run', [json.dumps(record) for record in RECORDS])


def assert_png(path: Path):
  data = path.read_bytes()
  assert data.startswith(PNG_SIGNATURE)
  assert len(data) > 5_000


def run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'experiments.plot', *args], cwd=REPO,
                        capture_output=True, text=True)


def test_plot_writes_metrics_png_in_the_workdir(workdir):
  out = plot.plot_metrics(workdir)
  assert out == workdir / 'metrics.png'
  assert_png(out)


def test_plot_draws_only_the_keys_a_run_recorded(tmp_path):
  # An older run: no validation top-5, no accuracy of the training set.
  records = [{k: v for k, v in r.items() if k not in ('val_top5_accuracy', 'train_accuracy')}
             for r in RECORDS]
  workdir = write_metrics(tmp_path / 'old', [json.dumps(record) for record in records])
  assert_png(plot.plot_metrics(workdir, tmp_path / 'old.png'))


def test_cli_writes_out_and_says_where(workdir, tmp_path):
  out = tmp_path / 'curves.png'
  result = run(f'--workdir={workdir}', f'--out={out}')
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == f'Wrote {out}'
  assert_png(out)


@pytest.mark.parametrize('lines, message', [
    ([], 'is empty: no epoch has finished yet'),
    (['', '  '], 'is empty: no epoch has finished yet'),
    (['[1, 2]'], 'line 1: not an epoch record'),
    ([json.dumps(RECORDS[0]), '{"epoch": 2, "val_loss": "high"}'],
     "line 2: val_loss is not a number: 'high'"),
    (['{"epoch": 1, "seconds": 3.5}'], 'holds no loss or accuracy to draw'),
])
def test_plot_refuses_bad_metrics(tmp_path, lines, message):
  workdir = write_metrics(tmp_path / 'bad', lines)
  with pytest.raises(UserError, match=message):
    plot.plot_metrics(workdir)


def test_plot_without_matplotlib_says_how_to_install_it(workdir, monkeypatch):
  real_import = builtins.__import__

  def import_without_matplotlib(name, *args, **kwargs):
    if name.partition('.')[0] == 'matplotlib':
      raise ImportError(f'No module named {name!r}')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', import_without_matplotlib)
  with pytest.raises(UserError, match=r"pip install 'rnn-jax\[plot\]'"):
    plot.plot_metrics(workdir)
  assert not (workdir / 'metrics.png').exists()


@pytest.mark.parametrize('case, message', [
    ('missing', 'holds no metrics.jsonl'),
    ('malformed', 'line 2: not JSON'),
    ('suffix', '--out must name a .png file'),
])
def test_cli_reports_bad_input_on_one_line(workdir, tmp_path, case, message):
  malformed = write_metrics(tmp_path / 'malformed', [json.dumps(RECORDS[0]), '{oops'])
  args = {'missing': [f'--workdir={tmp_path / "nowhere"}'],
          'malformed': [f'--workdir={malformed}'],
          'suffix': [f'--workdir={workdir}', f'--out={tmp_path / "curves.jpg"}']}[case]
  result = run(*args)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], result.stderr
