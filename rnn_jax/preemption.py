"""Stopping a training run cleanly on SIGTERM (a preemption notice) or Ctrl-C (SIGINT)."""

from pathlib import Path
import signal
import threading
from typing import Self

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
    self._previous = {}

  def __enter__(self) -> Self:
    # Python runs signal handlers in the main thread only, and may install them only there.
    if threading.current_thread() is threading.main_thread():
      self._previous = {number: signal.signal(number, self._note) for number in SIGNALS}
    return self

  def __exit__(self, *unused_exc_info):
    self._restore()

  def stopped(self, saved: Path) -> Stopped:
    """The exception that ends the run once its state is `saved`."""
    return Stopped(f'stopped by {signal.Signals(self.signum).name}: the state is saved in '
                   f'{saved}; continue with --resume', self.signum)

  def _note(self, signum: int, unused_frame):
    self.signum = signum
    self._restore()

  def _restore(self):
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous = {}
