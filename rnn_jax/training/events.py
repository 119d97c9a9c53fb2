"""TensorBoard event files in the work dir: `tensorboard --logdir=WORKDIR` watches a run.

    workdir/tensorboard/events.out.tfevents.*   one file per start of the run (fresh or resumed)

At each log step: the training loss, accuracy and windows/s since the last one; at each epoch's
end: the validation loss, accuracy, top-5 and bits, the learning rate and the generated samples;
at a fresh start, the config as hyperparameters. Steps are global training steps.

tensorboardX writes the files (why it: WORKSPACE.md, "Dependencies"). A resumed run starts a new
file that purges every event after the step it resumes from, so TensorBoard shows each step once:
a crash can leave events that its checkpoint never held. The files are flushed at each write, so
a kill loses none of what its checkpoint holds.
"""

from pathlib import Path
from typing import Any, Self

import tensorboardX
from tensorboardX.summary import hparams

from rnn_jax.configs import Config
from rnn_jax.training import parallel

DIRECTORY = 'tensorboard'
# Validation figures shown beside the hyperparameters in TensorBoard's HParams tab.
COMPARED = ('val/loss', 'val/accuracy')


class EventLog:
  """Writes a run's events; in a run over several processes, process 0 alone writes them."""

  def __init__(self, workdir: Path, config: Config, resumed_step: int):
    """`resumed_step`: the global step the run goes on from (0: a fresh start)."""
    self._writer = None
    if not parallel.is_primary():
      return
    # Each start marks itself (TensorBoard takes every start after the first as a restart) and
    # purges the steps after its checkpoint's: a crash can leave events it never saved.
    self._writer = tensorboardX.SummaryWriter(str(Path(workdir) / DIRECTORY),
                                              purge_step=resumed_step + 1)
    if not resumed_step:
      experiment, start, end = hparams(config.flat(), dict.fromkeys(COMPARED))
      for summary in (experiment, start, end):
        self._writer.file_writer.add_summary(summary)
      self._writer.flush()

  def training(self, step: int, means: dict[str, float], windows_per_second: float):
    """The training figures since the last log step, at global `step`."""
    self._scalars(step, {'train/loss': means['loss'], 'train/accuracy': means['accuracy'],
                         'train/windows_per_second': windows_per_second})

  def epoch(self, step: int, record: dict[str, Any], learning_rate: float,
            samples: list[tuple[str, str]]):
    """An epoch's line of metrics.jsonl, its learning rate and its (seed, continuation) pairs."""
    if self._writer is None:
      return
    if samples:
      self._writer.add_text('samples', '\n\n'.join(f'{seed} **→ {continuation}**'
                                                   for seed, continuation in samples), step)
    self._scalars(step, {'val/loss': record['val_loss'], 'val/accuracy': record['val_accuracy'],
                         'val/top5_accuracy': record['val_top5_accuracy'],
                         'val/bits': record['val_bits'], 'learning_rate': learning_rate})

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *unused_exc_info):
    if self._writer is not None:
      self._writer.close()

  def _scalars(self, step: int, values: dict[str, float]):
    if self._writer is None:
      return
    for tag, value in values.items():
      self._writer.add_scalar(tag, value, step)
    self._writer.flush()
