"""Orbax's event loops, closed without tracebacks when a read or a write fails.

When one array's read or write fails (a damaged checkpoint, a full disk), orbax's gather raises
while the other arrays' tensorstore operations are still running. Orbax 0.12.8 runs each
coroutine on a fresh loop and then closes it without cancelling what is left, as asyncio.run
would (it avoids asyncio.run for a race between threads); each operation left then prints
'Event loop is closed', or 'Exception ignored in: coroutine', with a traceback when it ends:
hundreds of lines around the one-line error. Orbax has no option for this. Cancelling the tasks
is not all: a tensorstore operation already under way still ends in its own thread and hands its
result to the closed loop, which raises 'Event loop is closed' where nothing can catch it.
"""

import asyncio
import functools
import sys

from orbax.checkpoint._src import asyncio_utils


def cancel_leftovers():
  """Makes orbax's run_sync cancel the tasks a coroutine leaves behind, and wait for them."""
  # Orbax's modules all call it through its module, so this reaches every save and restore.
  asyncio_utils.run_sync = _cancelling_leftovers(asyncio_utils.run_sync)
  sys.unraisablehook = _quiet_about_closed_loops(sys.unraisablehook)


def _cancelling_leftovers(run_sync):
  async def without_leftovers(coroutine):
    try:
      return await coroutine
    finally:
      leftovers = asyncio.all_tasks() - {asyncio.current_task()}
      for task in leftovers:
        task.cancel()
      await asyncio.gather(*leftovers, return_exceptions=True)

  return functools.wraps(run_sync)(lambda coroutine: run_sync(without_leftovers(coroutine)))


def _quiet_about_closed_loops(hook):
  """Drops the closed loop's complaint from a late tensorstore callback, and only that: the read
  or write it belonged to has already failed, and its error is the one reported."""
  def unraisablehook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      hook(unraisable)

  return unraisablehook
