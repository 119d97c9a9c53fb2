"""Issue 9's promises with real processes and real signals: a run killed at any moment resumes
bit for bit, a corrupt checkpoint is set aside, a NaN is never saved, a failed write is one line.
Checksums and damaged run files: test_checkpoint_integrity.py.

The reference is the `trained` fixture: the same tiny run, uninterrupted and checkpointed only at
epoch ends (13 steps an epoch, 39 in all).
"""

import functools
import logging
from pathlib import Path
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rnn_jax import train
from rnn_jax.configs import TrainConfig
from rnn_jax.corpus import data
from rnn_jax.errors import UserError
from rnn_jax.training import checkpoints
from rnn_jax.training import orbax_loop
from rnn_jax.training import preemption

from conftest import flags_of, read_metrics, tiny_config

REPO = Path(__file__).parents[1]
EVERY = 2  # --checkpoint_every_steps of the interrupted runs
STEPS_PER_EPOCH = 13


def start(corpus: Path, workdir: Path, *args: str) -> tuple[subprocess.Popen, Path]:
  """The tiny run as a user starts it, and the file its stderr goes to."""
  config = tiny_config(corpus, checkpoint_every_steps=EVERY)
  log = workdir.parent / f'{workdir.name}.{time.monotonic_ns()}.log'
  with open(log, 'w') as stderr:
    process = subprocess.Popen(
        [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}', *flags_of(config),
         *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
  return process, log


def steps_on_disk(workdir: Path) -> list[int]:
  """The complete checkpoints: orbax renames a step's temporary directory once it is written."""
  directory = workdir / checkpoints.CHECKPOINTS
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if (
      directory.is_dir()) else []


def saving(workdir: Path, after: int = 0) -> bool:
  """Whether orbax is writing the checkpoint of a step past `after` (a kill can leave an older
  step's temporary directory behind, until the resumed run removes it)."""
  directory = workdir / checkpoints.CHECKPOINTS
  steps = [p.name.split('.')[0] for p in directory.iterdir() if 'tmp' in p.name] if (
      directory.is_dir()) else []
  return any(step.isdigit() and int(step) > after for step in steps)


def signal_when(process: subprocess.Popen, condition, signum: int) -> int:
  """Sends `signum` as soon as `condition()` holds (polled every millisecond); the exit code."""
  deadline = time.monotonic() + 120
  while not condition():
    assert process.poll() is None, 'the run ended before the signal'
    assert time.monotonic() < deadline, 'timed out waiting for a checkpoint'
    time.sleep(0.001)
  process.send_signal(signum)
  return process.wait(timeout=120)


def assert_same_run(workdir: Path, reference: Path):
  """The final params equal bit for bit, and metrics.jsonl holds each epoch once, as equal."""
  *_, params = train.load(workdir, 'latest')
  *_, expected = train.load(reference, 'latest')
  for leaf, reference_leaf in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    assert np.array_equal(leaf, reference_leaf)
  without_time = lambda records: [{k: v for k, v in r.items() if k != 'seconds'}
                                  for r in records]
  assert without_time(read_metrics(workdir)) == without_time(read_metrics(reference))


@pytest.mark.heavy
def test_runs_killed_at_any_moment_resume_bit_for_bit(corpus, trained, tmp_path):
  reference, _ = trained
  workdir = tmp_path / 'run'
  kill_points = [  # each given the latest complete step when the process starts
      lambda latest: steps_on_disk(workdir)[-1:] >= [EVERY],  # the first checkpoint
      lambda latest: steps_on_disk(workdir)[-1:] >= [STEPS_PER_EPOCH + 3],  # past an epoch end
      lambda latest: saving(workdir, after=latest),  # while orbax writes a checkpoint
  ]
  for number, kill_point in enumerate(kill_points):
    latest = max(steps_on_disk(workdir), default=0)
    process, _ = start(corpus, workdir, *(['--resume'] if number else []))
    assert signal_when(process, functools.partial(kill_point, latest),
                       signal.SIGKILL) == -signal.SIGKILL
  finish, log = start(corpus, workdir, '--resume')
  assert finish.wait(timeout=120) == 0, log.read_text()
  assert 'Resuming' in log.read_text()
  # Clean output: absl's INFO lines only, no warning a user cannot act on.
  assert [line for line in log.read_text().splitlines() if not line.startswith('I')] == []
  assert_same_run(workdir, reference)


@pytest.mark.heavy
# A late tensorstore callback of the damaged read reaches its closed loop. The commands drop that
# complaint (training/orbax_loop.py), but pytest puts its own unraisable hook in for each test.
@pytest.mark.filterwarnings('ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning')
def test_sigterm_saves_and_corrupt_checkpoints_are_set_aside(corpus, trained, tmp_path, caplog):
  reference, _ = trained
  workdir = tmp_path / 'run'
  process, log = start(corpus, workdir)
  assert signal_when(process, lambda: steps_on_disk(workdir)[-1:] >= [4],
                     signal.SIGTERM) == 128 + signal.SIGTERM
  saved = steps_on_disk(workdir)[-1]
  assert [line for line in log.read_text().splitlines() if not line.startswith('I')] == [
      (f'stopped by SIGTERM: the state is saved in '
       f'{workdir / checkpoints.CHECKPOINTS / str(saved)}; continue with --resume')]

  # The latest checkpoint cut short, then (once epoch 2 is done) one of its files deleted.
  damages = [lambda path: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),
             Path.unlink]
  for max_epochs, damage in zip((2, 3), damages):
    latest = steps_on_disk(workdir)[-1]
    data_file = next((workdir / checkpoints.CHECKPOINTS / str(latest) / 'state' / 'd').iterdir())
    damage(data_file)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      train.train_and_evaluate(tiny_config(corpus, checkpoint_every_steps=EVERY,
                                           max_epochs=max_epochs), workdir, resume=True)
    assert f'The checkpoint at step {latest} does not read back' in caplog.text
    assert (workdir / checkpoints.UNREADABLE / str(latest)).is_dir()
  assert_same_run(workdir, reference)
  saved_config, _ = checkpoints.read_run(workdir)
  assert saved_config.train.max_epochs == 3  # what the last resume ran with


def test_checkpoints_that_all_fail_to_read_are_one_line_and_no_traceback(corpus, trained,
                                                                        tmp_path):
  reference, _ = trained
  workdir = Path(shutil.copytree(reference, tmp_path / 'run'))
  for step in steps_on_disk(workdir):  # every array's read fails, the others still in flight
    data_file = next((workdir / checkpoints.CHECKPOINTS / str(step) / 'state' / 'd').iterdir())
    data_file.write_bytes(data_file.read_bytes()[:data_file.stat().st_size // 2])
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}',
       *flags_of(tiny_config(corpus)), '--resume'],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr and 'Exception ignored' not in result.stderr
  expected = (f'error: no checkpoint in {re.escape(str(workdir))} reads back '
              r'\(step 39: ValueError: .+\); to start over, pass --overwrite')
  lines = [line for line in result.stderr.splitlines() if not line.startswith('I')]
  assert len(lines) == 1 and re.fullmatch(expected, lines[0]), result.stderr


def test_only_the_closed_loops_complaint_is_dropped_from_the_unraisable_hook():
  """What a late tensorstore callback raises after a failed read is silenced (the read's error
  is the one reported); anything else still reaches the hook."""
  seen = []
  hook = orbax_loop._quiet_about_closed_loops(seen.append)
  kept = [RuntimeError('something else'), ValueError('Event loop is closed')]
  for error in (RuntimeError('Event loop is closed'), *kept):
    hook(types.SimpleNamespace(exc_value=error))
  assert [record.exc_value for record in seen] == kept


def test_the_first_signal_asks_to_stop_and_a_second_one_stops_at_once():
  # Python's own handlers before, whatever the test runner's worker holds: they must be back.
  before = {number: signal.signal(number, handler) for number, handler in
            [(signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)]}
  try:
    with preemption.StopRequest() as stop:
      signal.raise_signal(signal.SIGINT)
      assert stop.signum == signal.SIGINT
      with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  finally:
    for number, handler in before.items():
      signal.signal(number, handler)
  stopped = stop.stopped(Path('/runs/x/checkpoints/6'))
  assert stopped.exit_code == 130
  assert str(stopped) == ('stopped by SIGINT: the state is saved in /runs/x/checkpoints/6; '
                          'continue with --resume')


def all_finite(workdir: Path, step: int, corpus: Path) -> bool:
  manager = checkpoints.manager(workdir)
  _, tokenizer = checkpoints.read_run(workdir)
  state, _ = checkpoints.restore(manager, step,
                                 train.create_train_state(tiny_config(corpus), tokenizer.vocab_size))
  manager.close()
  return all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state))


@pytest.mark.parametrize('skip, every, message, steps', [
    (False, 1, 'the training loss or its gradient became non-finite at step 2 (loss nan)', [1]),
    (True, 5, 'the validation loss became nan after epoch 1', [5, 10]),
], ids=['stop', 'skip'])
def test_a_learning_rate_that_overflows_never_reaches_a_checkpoint(corpus, tmp_path, skip, every,
                                                                    message, steps):
  # Step 1 moves every weight by 1e30; step 2's loss is NaN. Skipping it (and every later one)
  # leaves a model whose validation loss is NaN: stopped, and not saved, least of all as best.
  config = tiny_config(corpus, learning_rate=1e30, checkpoint_every_steps=every,
                       skip_nonfinite=skip)
  with pytest.raises(UserError, match=re.escape(message)):
    train.train_and_evaluate(config, tmp_path)
  assert steps_on_disk(tmp_path) == steps
  assert all(all_finite(tmp_path, step, corpus) for step in steps)
  manager = checkpoints.manager(tmp_path)
  assert manager.best_step() is None
  manager.close()
  assert not (tmp_path / checkpoints.METRICS).exists()  # no epoch was recorded


def poison(monkeypatch, epoch: int, batch: int):
  """Training's `batch`-th batch of `epoch` gets NaN weights, so its loss is NaN."""
  batches = data.batches

  def poisoned(windows, batch_size, **kwargs):
    for number, (features, labels, weights) in enumerate(
        batches(windows, batch_size, **kwargs), kwargs.get('start', 0) + 1):
      if (kwargs.get('seed') is not None, kwargs.get('epoch'), number) == (True, epoch, batch):
        weights = np.full_like(weights, np.nan)
      yield features, labels, weights

  monkeypatch.setattr(data, 'batches', poisoned)


def test_skip_nonfinite_skips_a_poisoned_batch_and_counts_it(corpus, tmp_path, monkeypatch):
  poison(monkeypatch, epoch=1, batch=3)
  with pytest.raises(UserError, match='non-finite at step 3'):
    train.train_and_evaluate(tiny_config(corpus, checkpoint_every_steps=1), tmp_path / 'stop')
  assert steps_on_disk(tmp_path / 'stop') == [1, 2]
  train.train_and_evaluate(tiny_config(corpus, max_epochs=2, skip_nonfinite=True),
                           tmp_path / 'skip')
  records = read_metrics(tmp_path / 'skip')
  assert [r['skipped_batches'] for r in records] == [1, 0]
  assert records[1]['val_loss'] < records[0]['val_loss'] - 0.5  # the other batches trained it
  assert all_finite(tmp_path / 'skip', 26, corpus)


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(corpus, trained, tmp_path,
                                                                        monkeypatch):
  reference, _ = trained
  save = ocp.CheckpointManager.save
  calls = []

  def full_at_the_third(manager, step, *args, **kwargs):
    calls.append(step)
    if len(calls) == 3:  # as tensorstore reports it
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed to '
                       "write 2921 bytes to file 11: No space left on device [os_error_code='28']")
    return save(manager, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_at_the_third)
  config = tiny_config(corpus, checkpoint_every_steps=EVERY)
  with pytest.raises(UserError, match=r'^could not write to \S+checkpoints \(No space left on '
                                      r'device\); what was saved before stays'):
    train.train_and_evaluate(config, tmp_path)
  assert steps_on_disk(tmp_path) == [2, 4]
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  train.train_and_evaluate(config, tmp_path, resume=True)
  assert_same_run(tmp_path, reference)


def test_a_work_dir_that_cannot_be_made_is_one_line(corpus, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(UserError, match=f'^could not write to {blocker / "run"} \\(Not a '
                                      'directory\\)'):
    train.train_and_evaluate(tiny_config(corpus), blocker / 'run')


@pytest.mark.parametrize('name, content, message', [
    ('one_word.txt', '\n'.join('word ' * (20 + i) for i in range(20)),
     "the vocabulary holds 1 word(s) 'word': nothing to predict"),
    ('no_column.csv', 'id,body\n' + '\n'.join(f'{i},alpha beta' for i in range(9)),
     "no_column.csv has no column 'patent_abstract'; its columns: ['id', 'body']"),
    ('short.txt', '\n'.join(['alpha beta gamma delta'] * 20),
     'none of the 20 texts has more than 4 words'),
], ids=['one_word', 'no_column', 'too_short'])
def test_bad_data_is_refused_before_anything_is_written(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_text(content)
  with pytest.raises(UserError, match=re.escape(message)):
    train.train_and_evaluate(tiny_config(path), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_a_flagfile_with_an_unknown_flag_gets_one_line_and_writes_nothing(corpus, tmp_path):
  flagfile = tmp_path / 'bad.flags'
  flagfile.write_text('--rnn_units=4\n--no_such_flag=3\n')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.train', f'--workdir={tmp_path / "run"}',
       f'--data={corpus}', f'--flagfile={flagfile}'],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert result.stderr == "error: Unknown command line flag 'no_such_flag'\n"
  assert not (tmp_path / 'run').exists()


def test_out_of_range_flags_are_refused():
  # Entry points print a UserError on one line (test_train.py::test_cli_refuses_a_workdir...).
  with pytest.raises(UserError, match='checkpoint_every_steps must be >= 0, got -1'):
    TrainConfig(checkpoint_every_steps=-1)
