"""The work dir: a run's config, tokenizer, metrics and orbax checkpoints.

    workdir/config.json      the full Config: with tokenizer.json it rebuilds the model
    workdir/tokenizer.json
    workdir/metrics.jsonl    one JSON object per epoch
    workdir/results.json     the best checkpoint's final evaluation
    workdir/checkpoints/N/   after global step N: train state and progress; the two latest and,
                             among those taken at epoch ends, the one with the lowest validation
                             loss are kept
    workdir/unreadable_checkpoints/N/   a checkpoint that failed to read back, set aside on resume
    workdir/tensorboard/     TensorBoard's event files (`events`)

In a run over several processes, orbax saves and restores checkpoints collectively; process 0
alone writes the other files.

A checkpoint's progress is a JSON object: 'epoch' (epochs finished), 'batches_done' and
'train_sums' (how far into the next epoch, and its metric sums so far; absent at an epoch's end),
the early-stopping 'best_metric' and 'patience_count', 'record' (the last finished epoch's line
of metrics.jsonl), the parameters' 'param_shapes', and the checksums of `integrity`. Older
checkpoints may lack the record and the checksums.
"""

import contextlib
import json
import math
import os
from pathlib import Path
import re
import shutil
from typing import Any

from absl import logging
from flax import traverse_util
import orbax.checkpoint as ocp

from rnn_jax.configs import Config, RESUMABLE
from rnn_jax.corpus.text import Tokenizer
from rnn_jax.errors import UserError
from rnn_jax.training import events
from rnn_jax.training import integrity
from rnn_jax.training import orbax_loop
from rnn_jax.training import parallel

CONFIG = 'config.json'
TOKENIZER = 'tokenizer.json'
METRICS = 'metrics.jsonl'
RESULTS = 'results.json'
CHECKPOINTS = 'checkpoints'
UNREADABLE = 'unreadable_checkpoints'
RUN_FILES = (CONFIG, TOKENIZER, METRICS, RESULTS, CHECKPOINTS, UNREADABLE, events.DIRECTORY)


orbax_loop.cancel_leftovers()


@contextlib.contextmanager
def writing(where: str | Path):
  """Turns a failed write (a full disk, no permission) into one line.

  Orbax raises the error of a background write at the next save or wait, as tensorstore's
  ValueError.
  """
  try:
    yield
  except (OSError, ValueError) as error:
    raise UserError(f'could not write to {where} ({_reason(error)}); what was saved before '
                    'stays: make room or make it writable, then continue with --resume') from None


def _reason(error: Exception) -> str:
  """The error in a few words: tensorstore's messages run to pages of JSON."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  code = re.search(r"os_error_code='(\d+)'", str(error))
  if code:
    return os.strerror(int(code.group(1)))
  first_line = str(error).split('\n')[0][:200]
  return f'{type(error).__name__}: {first_line}' if first_line else repr(error)


def finish(checkpoint_manager: ocp.CheckpointManager):
  """Waits until the checkpoints being written are complete."""
  with writing(checkpoint_manager.directory):
    checkpoint_manager.wait_until_finished()


def close(checkpoint_manager: ocp.CheckpointManager):
  """Waits for the writes in flight, then stops orbax's threads."""
  with writing(checkpoint_manager.directory):
    checkpoint_manager.close()


def _val_loss(metrics: dict[str, float]) -> float:
  return metrics['val_loss']


def manager(workdir: str | Path, *, training: bool = False) -> ocp.CheckpointManager:
  """Keeps the two latest checkpoints (for --resume, and one to fall back on should the latest
  not read back) and the best by val_loss among those saved with one: epoch ends.

  Checkpoints are numbered by global step, so those taken inside an epoch sort between the
  epochs'. They carry no metrics: orbax's best_step() passes over them, and BestN does not keep
  them. A kill during a save leaves a temporary directory that orbax never lists as a step; the
  manager that trains removes such leftovers (another process reading the work dir must not).
  """
  keep = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=2),
      ocp.checkpoint_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1,
                                    keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=_val_loss, best_mode='min', preservation_policy=keep,
      cleanup_tmp_directories=training)
  return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINTS, options=options)


def save(checkpoint_manager: ocp.CheckpointManager, step: int, state: Any,
         progress: dict[str, Any], val_loss: float | None = None):
  """Saves in the background: training goes on while the state is written.

  `val_loss` is given at epoch ends only. The progress records the parameters' shapes, so that a
  restore into another model is told what differs rather than failing deep inside orbax, and the
  checksums that restore checks.
  """
  progress = integrity.seal(progress | {'param_shapes': _shapes(state.params)}, state)
  metrics = None if val_loss is None else {'val_loss': val_loss}
  with writing(checkpoint_manager.directory):
    checkpoint_manager.save(step, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))


def restore(checkpoint_manager: ocp.CheckpointManager, step: int,
            target: Any) -> tuple[Any, dict]:
  """Returns the (state, progress) saved at `step`; `target` gives the state's structure.

  A state that differs from its checksums raises integrity.ChecksumError.
  """
  saved = progress_of(checkpoint_manager, step)
  expected = _shapes(target.params)
  if saved.get('param_shapes', expected) != expected:
    raise UserError(f'the checkpoint at step {step} holds another model than the config '
                    f'describes: {_shape_differences(saved["param_shapes"], expected)}')
  state = checkpoint_manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target))).state
  integrity.check_arrays(saved, state)
  return state, saved


def read_back(checkpoint_manager: ocp.CheckpointManager, step: int,
              target: Any) -> tuple[Any, dict]:
  """restore() for those who only read (sampling, evaluation, serving): a checkpoint that does
  not read back is refused in one line."""
  try:
    return restore(checkpoint_manager, step, target)
  except UserError:
    raise
  # Orbax and tensorstore report damage as OSError, ValueError, KeyError or bare Exception.
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise UserError(f'the checkpoint {checkpoint_manager.directory / str(step)} does not read '
                    f'back ({_reason(error)}): it is damaged') from None


def step_of(checkpoint_manager: ocp.CheckpointManager, which: str | int) -> int:
  """The step of checkpoint `which`: 'best' (lowest validation loss), 'latest' or a step."""
  if which not in ('best', 'latest') and not isinstance(which, int):
    raise UserError(f"which checkpoint: 'best', 'latest' or a step, not {which!r}")
  steps = checkpoint_manager.all_steps()
  step = {'best': checkpoint_manager.best_step,
          'latest': checkpoint_manager.latest_step}.get(which, lambda: which)()
  if step is None:  # 'best' is among the epochs' checkpoints, not those inside an epoch
    raise UserError(f'{checkpoint_manager.directory.parent} holds no '
                    f'{"epoch-end " if which == "best" else ""}checkpoint yet')
  if step not in steps:
    raise UserError(f'{checkpoint_manager.directory.parent} holds no checkpoint {step} (it holds '
                    f'{", ".join(map(str, steps)) or "none"})')
  return step


def progress_of(checkpoint_manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The progress saved at `step` (its epoch, position and early-stopping state)."""
  progress = checkpoint_manager.restore(step, args=ocp.args.Composite(
      progress=ocp.args.JsonRestore())).progress
  integrity.check_progress(progress)
  return progress


def restore_latest(workdir: str | Path, target: Any) -> tuple[Any, dict] | None:
  """(state, progress) of the newest checkpoint that reads back whole; None when there is none.

  Every checkpoint is read: one whose files were cut short, deleted or garbled (orbax's errors,
  or checksums that differ) is moved to unreadable_checkpoints/ with a warning, and an older one
  is used. The training manager reads every checkpoint's metrics when it opens, so those are
  checked too. When none reads back, the cause is more likely the reader than the files: the
  newest one's error is raised and nothing is moved.
  """
  reader = ocp.CheckpointManager(
      Path(workdir).absolute() / CHECKPOINTS,
      options=ocp.CheckpointManagerOptions(create=False, lightweight_initialize=True))
  latest, failures = None, {}
  try:
    for step in sorted(reader.all_steps(), reverse=True):
      try:
        reader.metrics(step)
        restored = restore(reader, step, target)
      # Orbax and tensorstore report damage as OSError, ValueError, KeyError or bare Exception.
      except Exception as error:  # pylint: disable=broad-exception-caught
        failures[step] = error
        continue
      latest = latest or restored
  finally:
    reader.close()
  if failures and latest is None:
    step, error = next(iter(failures.items()))
    raise error if isinstance(error, UserError) else UserError(
        f'no checkpoint in {workdir} reads back (step {step}: {_reason(error)}); to start over, '
        'pass --overwrite') from None
  for step, error in failures.items():
    _set_aside(Path(workdir), step, error)
  return latest


def _set_aside(workdir: Path, step: int, error: Exception):
  """Moves an unreadable checkpoint out of orbax's sight, keeping it for a post-mortem."""
  if not parallel.is_primary():
    return
  target = workdir / UNREADABLE / str(step)
  shutil.rmtree(target, ignore_errors=True)
  target.parent.mkdir(exist_ok=True)
  (workdir / CHECKPOINTS / str(step)).rename(target)
  logging.warning('The checkpoint at step %d does not read back (%s): moved to %s; resuming from '
                  'an earlier one', step, _reason(error), target)


def _shapes(params: Any) -> dict[str, list[int]]:
  return {'/'.join(path): list(leaf.shape)
          for path, leaf in traverse_util.flatten_dict(params).items()}


def _shape_differences(saved: dict[str, list[int]], expected: dict[str, list[int]]) -> str:
  names = sorted(saved.keys() | expected.keys())
  return '; '.join(f'{name} is {saved.get(name, "absent")} in the checkpoint, '
                   f'{expected.get(name, "absent")} in the config'
                   for name in names if saved.get(name) != expected.get(name))


def has_run(workdir: str | Path) -> bool:
  return (Path(workdir) / CONFIG).is_file()


def read_run(workdir: str | Path) -> tuple[Config, Tokenizer]:
  """The config and tokenizer a work dir was trained with."""
  workdir = Path(workdir)
  if not has_run(workdir):
    raise UserError(f'{workdir} holds no run (no {CONFIG})')
  return _read(workdir / CONFIG, Config.from_json), _read(workdir / TOKENIZER, Tokenizer.from_json)


def _read(path: Path, parse):
  """A run file parsed, or one line naming it: cut short, deleted, garbled or not the file."""
  try:
    return parse(path.read_text())
  except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
    raise UserError(f'cannot read {path} ({_reason(error)}): the work dir is damaged') from None


def config_for(workdir: str | Path, config: Config, *, resume: bool, overwrite: bool) -> Config:
  """The config to run with: with --resume, the saved run's, but for RESUMABLE fields.

  Nothing is written here, so a refusal leaves the work dir as it was.
  """
  workdir = Path(workdir)
  if resume and overwrite:
    raise UserError('--resume and --overwrite exclude each other')
  if not has_run(workdir) or overwrite:
    return config
  saved, _ = read_run(workdir)
  if not resume:
    changes = _differences(saved, config)
    detail = f' of another configuration ({", ".join(changes)})' if changes else ''
    raise UserError(f'{workdir} already holds a run{detail}; '
                    'pass --resume to continue it or --overwrite to replace it')
  flat = config.flat()
  resumed = Config.from_flat(saved.flat() | {name: flat[name] for name in RESUMABLE})
  ignored = _differences(resumed, config)
  if ignored:
    logging.warning('Resuming with the run\'s own settings; ignoring: %s', ', '.join(ignored))
  return resumed


def _differences(saved: Config, new: Config) -> list[str]:
  old, new = saved.flat(), new.flat()
  return [f'{name}: {old[name]!r} -> {new[name]!r}' for name in old if old[name] != new[name]]


def start_run(workdir: str | Path, config: Config, tokenizer: Tokenizer):
  """Clears an earlier run's files (only those) and writes this run's config and tokenizer."""
  if not parallel.is_primary():
    return
  workdir = Path(workdir)
  with writing(workdir):
    for name in RUN_FILES:
      path = workdir / name
      if path.is_dir():
        shutil.rmtree(path)
      else:
        path.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
  write_file(workdir / TOKENIZER, tokenizer.to_json())
  write_config(workdir, config)


def write_config(workdir: str | Path, config: Config):
  """config.json: a resumed run records the max_epochs, patience... it actually runs with."""
  write_file(Path(workdir) / CONFIG, config.to_json())


def write_file(path: Path, text: str):
  """Writes a file whole or not at all: a kill midway leaves the old one (or none)."""
  if not parallel.is_primary():
    return
  partial = path.with_name(path.name + '.part')
  with writing(path.parent):
    with open(partial, 'w') as f:
      f.write(text)
      _sync(f)
    os.replace(partial, path)


def _sync(f):
  """On the disk before the next checkpoint is: a power loss keeps what a checkpoint covers."""
  f.flush()
  os.fsync(f.fileno())


def append_metrics(workdir: str | Path, record: dict[str, Any]):
  if not parallel.is_primary():
    return
  with writing(workdir), open(Path(workdir) / METRICS, 'a') as f:
    f.write(json.dumps(record) + '\n')
    _sync(f)


def restore_metrics(workdir: str | Path, progress: dict[str, Any]):
  """metrics.jsonl as it was when the checkpoint of `progress` was saved.

  Drops the lines of epochs after it and a line a kill cut short, and writes again from the
  checkpoint's record the line of the epoch it ends or follows, should that one be missing.
  """
  path = Path(workdir) / METRICS
  if not parallel.is_primary() or not (path.exists() or 'record' in progress):
    return
  lines = path.read_text().splitlines(keepends=True) if path.exists() else []
  kept = [line for line in lines if _epoch_of(line) <= progress['epoch']]
  if 'record' in progress and not any(_epoch_of(line) == progress['epoch'] for line in kept):
    kept.append(json.dumps(progress['record']) + '\n')
  write_file(path, ''.join(kept))


def _epoch_of(line: str) -> float:
  """The line's epoch; infinity, so that it is dropped, for a line written only in part."""
  try:
    return json.loads(line)['epoch']
  except (json.JSONDecodeError, KeyError, TypeError):
    logging.warning('Dropping a metrics line written only in part: %r', line[:80])
    return math.inf
