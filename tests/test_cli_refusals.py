"""What the command-line tools refuse, each on one line with exit status 2, before any work."""

from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).parents[1]


def run(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', f'experiments.{module}', *args], cwd=REPO,
                        capture_output=True, text=True)


def refusal(result: subprocess.CompletedProcess) -> str:
  """The one line a refused command prints."""
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.splitlines() if not line.startswith(('I', 'W'))]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  return lines[0]


def test_a_positional_argument_is_one_line_not_the_help(tmp_path):
  assert 'unexpected arguments: extra' in refusal(run('train', f'--workdir={tmp_path}', 'extra'))


def test_a_flagfile_that_is_not_text_is_named(tmp_path):
  flagfile = tmp_path / 'binary.flags'
  flagfile.write_bytes(bytes(range(256)))
  line = refusal(run('train', f'--flagfile={flagfile}', f'--workdir={tmp_path}'))
  assert f'flagfile {flagfile} is not UTF-8 text' in line


def test_resume_needs_a_run_to_continue(tmp_path):
  line = refusal(run('train', f'--workdir={tmp_path / "absent"}', '--resume'))
  assert 'holds no run to continue' in line
  assert not (tmp_path / 'absent').exists()


def test_resume_refuses_a_typed_flag_that_would_change_the_run(trained):
  workdir, _ = trained
  before = {path: path.stat().st_mtime_ns for path in workdir.rglob('*')}
  line = refusal(run('train', f'--workdir={workdir}', '--resume', '--rnn_units=99',
                     '--max_epochs=9'))
  assert '--rnn_units (8 in the run, 99 given)' in line
  assert '--max_epochs' not in line.split('only')[0]  # a resumable flag may change
  assert {path: path.stat().st_mtime_ns for path in workdir.rglob('*')} == before


def test_an_allocation_failure_is_one_line():
  code = ('import jax\nfrom experiments import config_flags\n'
          'def main(argv):\n'
          '  raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating '
          '64424509440 bytes.")\n'
          'config_flags.run(main)\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True)
  assert 'out of memory on cpu: this needs 60.0 GiB at once' in refusal(result)


@pytest.mark.parametrize('flag', [f'--rng_seed={2**64}', '--num_samples=100000'])
def test_sample_refuses_seeds_and_sizes_out_of_range(flag, tmp_path):
  assert 'is not an integer in the range' in refusal(run('sample', f'--workdir={tmp_path}', flag))


def test_sample_refuses_too_many_rows_and_an_output_it_cannot_write(trained, tmp_path):
  workdir, _ = trained
  line = refusal(run('sample', f'--workdir={workdir}', '--num_random_seeds=3',
                     '--num_samples=400'))
  assert '3 seeds x 400 samples x beam width 1 is 1,200 continuations' in line
  line = refusal(run('sample', f'--workdir={workdir}', f'--output={tmp_path}'))
  assert 'is a directory' in line
  assert list(tmp_path.iterdir()) == []  # no .part left behind
