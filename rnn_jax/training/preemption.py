"""Stopping a training run cleanly on SIGTERM (a preemption notice) or Ctrl-C (SIGINT)."""

from pathlib import Path
import signal
import threading
from typing import Self

import jax

from rnn_jax.training import parallel

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """The run stopped on a signal after saving its state; exit with `exit_code` (128 + signal)."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class StopRequest:
  """Notes SIGTERM and SIGINT while training; the loop reads `signum` between steps.

  The handler only sets the flag, so the step in flight finishes and the loop saves the state.
  It also puts the previous handlers back: a second signal stops the process at once.
  """

  def __init__(self):
    self.signum: int | None = None
    self._agreed = False  # several processes: whether they agreed to stop
    self._previous = {}

  def __enter__(self) -> Self:
    # Python runs signal handlers in the main thread only, and may install them only there.
    if threading.current_thread() is threading.main_thread():
      self._previous = {number: signal.signal(number, self._note) for number in SIGNALS}
    return self

  def __exit__(self, *unused_exc_info):
    self._restore()

  def requested(self, check: bool = True) -> bool:
    """Whether to stop after this step. The processes of one run must stop at the same step:
    at `check` steps they agree to stop when any of them was signalled (a small collective)."""
    if jax.process_count() == 1:
      return self.signum is not None
    if check and not self._agreed:
      self._agreed = parallel.any_process(self.signum is not None)
    return self._agreed

  def stopped(self, saved: Path) -> Stopped:
    """The exception that ends the run once its state is `saved`."""
    cause = (signal.Signals(self.signum).name if self.signum
             else 'a signal to another process of the run')
    return Stopped(f'stopped by {cause}: the state is saved in {saved}; continue with --resume',
                   self.signum or signal.SIGTERM)

  def _note(self, signum: int, unused_frame):
    self.signum = signum
    self._restore()

  def _restore(self):
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous = {}
