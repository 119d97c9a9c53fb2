"""Orbax's event loops, closed without tracebacks when a read or a write fails.

When one array's read or write fails (a damaged checkpoint, a full disk), orbax's gather raises
while the other arrays' tensorstore operations are still running. Orbax 0.12.8 runs each
coroutine on a fresh loop and then closes it without cancelling what is left, as asyncio.run
would (it avoids asyncio.run for a race between threads); each operation left then prints
'Event loop is closed', or 'Exception ignored in: coroutine', with a traceback when it ends:
hundreds of lines around the one-line error. Orbax has no option for this.
"""

import asyncio
import functools

from orbax.checkpoint._src import asyncio_utils


def cancel_leftovers():
  """Makes orbax's run_sync cancel the tasks a coroutine leaves behind, and wait for them."""
  # Orbax's modules all call it through its module, so this reaches every save and restore.
  asyncio_utils.run_sync = _cancelling_leftovers(asyncio_utils.run_sync)


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
