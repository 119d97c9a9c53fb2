"""A work dir written before the cell seam (config names lstm_units, lstm_layers; no cell) still
loads, samples, evaluates, serves and resumes, with what the code that wrote it gave.

tests/fixtures/workdir_v1 was written by commit 2ac9b48 (2 epochs on the cycle corpus beside
it, `--data=corpus.txt` read from the work dir); workdir_v1_expected.json holds that code's
epoch 3 when resumed and its samples.
"""

import json
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
from starlette.testclient import TestClient

from rnn_jax import train
from rnn_jax.evaluation import evaluate as evaluation
from rnn_jax.serve import serving
from rnn_jax.serve import web

from conftest import read_metrics

FIXTURES = Path(__file__).parent / 'fixtures'
EXPECTED = json.loads((FIXTURES / 'workdir_v1_expected.json').read_text())
SAMPLE = ('--seed_text=alpha beta gamma delta', '--num_words=6', '--num_samples=3',
          '--temperature=1.5', '--rng_seed=0')


def run(module: str, *args: str) -> subprocess.CompletedProcess:
  """An entry point run from the current directory, where the work dir's corpus.txt lies."""
  return subprocess.run([sys.executable, '-m', f'experiments.{module}', *args],
                        capture_output=True, text=True, check=False)


@pytest.fixture
def old_run(tmp_path, monkeypatch) -> Path:
  """A copy of the old work dir, the current directory (its config reads corpus.txt there)."""
  workdir = tmp_path / 'workdir_v1'
  shutil.copytree(FIXTURES / 'workdir_v1', workdir)
  monkeypatch.chdir(workdir)
  return workdir


@pytest.mark.heavy
def test_an_old_work_dir_loads_samples_evaluates_and_serves(old_run):
  config, _, model, _ = train.load(old_run)
  assert (config.model.cell, config.model.rnn_units, config.model.rnn_layers) == ('lstm', 4, 1)
  assert set(train.load(old_run)[3]) == {'embed', 'lstm_0', 'dense', 'logits'}
  output = old_run / 'samples.jsonl'
  result = run('sample', f'--workdir={old_run}', *SAMPLE, f'--output={output}')
  assert result.returncode == 0, result.stderr
  samples = [json.loads(line) for line in output.read_text().splitlines()]
  assert [s['generated'] for s in samples] == [s['generated'] for s in EXPECTED['samples']]
  assert [s['mean_logprob'] for s in samples] == pytest.approx(
      [s['mean_logprob'] for s in EXPECTED['samples']], abs=1e-4)

  results = json.loads((old_run / 'results.json').read_text())
  assert evaluation.evaluate_run(old_run, 'valid')['loss'] == pytest.approx(
      results['valid']['loss'], rel=1e-5)
  with TestClient(web.app(serving.Service(old_run))) as client:
    health = client.get('/api/health').json()
    assert health['cell'] == 'lstm' and health['model_config']['rnn_units'] == 4
    answer = client.post('/api/generate', json={'seed_text': 'alpha beta', 'num_words': 3})
    assert answer.status_code == 200 and len(answer.json()['samples'][0]['generated'].split()) == 3


@pytest.mark.heavy
def test_an_old_work_dir_resumes_as_the_code_that_wrote_it_would_have(old_run):
  result = run('train', f'--workdir={old_run}', '--resume', '--max_epochs=3')
  assert result.returncode == 0, result.stderr
  epochs = read_metrics(old_run)
  assert [m['epoch'] for m in epochs] == [1, 2, 3]
  for name, value in EXPECTED['epoch_3'].items():
    assert epochs[-1][name] == pytest.approx(value, rel=1e-6), name
  # The resumed run writes its config in today's names.
  saved = json.loads((old_run / 'config.json').read_text())
  assert saved['cell'] == 'lstm' and saved['rnn_units'] == 4 and 'lstm_units' not in saved
