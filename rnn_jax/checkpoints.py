"""The work dir: a run's config, tokenizer, metrics and orbax checkpoints.

    workdir/config.json      the full Config: with tokenizer.json it rebuilds the model
    workdir/tokenizer.json
    workdir/metrics.jsonl    one JSON object per epoch
    workdir/results.json     the best checkpoint's final evaluation
    workdir/checkpoints/N/   after epoch N: train state and progress; the latest epoch and the
                             one with the lowest validation loss are kept
"""

import json
import math
from pathlib import Path
import shutil
from typing import Any

from absl import logging
from flax import traverse_util
import orbax.checkpoint as ocp

from rnn_jax.configs import Config, RESUMABLE
from rnn_jax.errors import UserError
from rnn_jax.text import Tokenizer

CONFIG = 'config.json'
TOKENIZER = 'tokenizer.json'
METRICS = 'metrics.jsonl'
RESULTS = 'results.json'
CHECKPOINTS = 'checkpoints'
RUN_FILES = (CONFIG, TOKENIZER, METRICS, RESULTS, CHECKPOINTS)


def _val_loss(metrics: dict[str, float]) -> float:
  return metrics['val_loss']


def manager(workdir: str | Path) -> ocp.CheckpointManager:
  """Keeps the latest checkpoint (for --resume) and the best by val_loss (save_best_only)."""
  keep = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=1),
      ocp.checkpoint_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=_val_loss, best_mode='min', preservation_policy=keep)
  return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINTS, options=options)


def save(checkpoint_manager: ocp.CheckpointManager, epoch: int, state: Any,
         progress: dict[str, Any], val_loss: float):
  """Saves in the background: the next epoch trains while this one is written.

  The progress records the parameters' shapes, so that a restore into another model is told
  what differs rather than failing deep inside orbax.
  """
  progress = progress | {'param_shapes': _shapes(state.params)}
  checkpoint_manager.save(epoch, metrics={'val_loss': val_loss}, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))


def restore(checkpoint_manager: ocp.CheckpointManager, epoch: int,
            target: Any) -> tuple[Any, dict]:
  """Returns the (state, progress) saved after `epoch`; `target` gives the state's structure."""
  saved = checkpoint_manager.restore(epoch, args=ocp.args.Composite(
      progress=ocp.args.JsonRestore())).progress
  expected = _shapes(target.params)
  if saved.get('param_shapes', expected) != expected:
    raise UserError(f'the checkpoint after epoch {epoch} holds another model than the config '
                    f'describes: {_shape_differences(saved["param_shapes"], expected)}')
  restored = checkpoint_manager.restore(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()))
  return restored.state, restored.progress


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
  config = Config.from_json((workdir / CONFIG).read_text())
  return config, Tokenizer.from_json((workdir / TOKENIZER).read_text())


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
  workdir = Path(workdir)
  for name in RUN_FILES:
    path = workdir / name
    if path.is_dir():
      shutil.rmtree(path)
    else:
      path.unlink(missing_ok=True)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / TOKENIZER).write_text(tokenizer.to_json())
  (workdir / CONFIG).write_text(config.to_json())


def append_metrics(workdir: str | Path, record: dict[str, Any]):
  with open(Path(workdir) / METRICS, 'a') as f:
    f.write(json.dumps(record) + '\n')


def truncate_metrics(workdir: str | Path, last_epoch: int):
  """Drops the metrics of epochs after last_epoch, and a line a kill cut short."""
  path = Path(workdir) / METRICS
  if path.exists():
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(''.join(line for line in lines if _epoch_of(line) <= last_epoch))


def _epoch_of(line: str) -> float:
  """The line's epoch; infinity, so that it is dropped, for a line written only in part."""
  try:
    return json.loads(line)['epoch']
  except (json.JSONDecodeError, KeyError, TypeError):
    logging.warning('Dropping a metrics line written only in part: %r', line[:80])
    return math.inf
