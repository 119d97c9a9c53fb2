"""The live line that shows how an epoch is going."""

import sys
import time

from absl import logging


class ProgressLine:
  """A live progress line inside an epoch: steps, windows per second, time left."""

  def __init__(self, epoch: int, num_steps: int, batch_size: int, first_step: int = 0):
    self.epoch, self.num_steps, self.batch_size = epoch, num_steps, batch_size
    self.first_step = first_step  # steps done before this process took the epoch up
    self.start = time.perf_counter()
    self.live = sys.stderr.isatty()

  def update(self, step: int, means: dict[str, float]) -> float:
    """Shows the epoch's running means at `step`; returns the windows per second so far."""
    elapsed = time.perf_counter() - self.start
    rate = (step - self.first_step) * self.batch_size / max(elapsed, 1e-9)
    left = elapsed / max(step - self.first_step, 1) * (self.num_steps - step)
    line = (f'epoch {self.epoch} step {step}/{self.num_steps}  loss {means["loss"]:.4f} '
            f'({means["bits"]:.3f} bits)  accuracy {means["accuracy"]:.4f}  {rate:,.0f} windows/s  '
            f'ETA {left:.0f}s')
    if self.live:
      print('\r' + line, end='', file=sys.stderr, flush=True)
    else:
      logging.info(line)
    return rate

  def done(self):
    if self.live:
      print('\r\033[K', end='', file=sys.stderr, flush=True)
