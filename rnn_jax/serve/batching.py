"""Micro-batching: requests that arrive together are answered by one call of a batched function.

A server's handlers `submit` their work and await the answer. One task on the event loop takes
the first waiting request, gathers those that arrive within `wait_s` (or until `max_rows` rows
are waiting), groups them by what must be equal inside one call (a group key), and runs each
group's call in a worker thread, so the event loop keeps accepting requests meanwhile. Requests
that arrive during a call wait for the next, which makes batches grow with the load.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

# run(group, items) -> one result per item; called in the worker thread with at most max_rows rows.
Run = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


@dataclasses.dataclass
class _Pending:
  group: Hashable
  item: Any
  rows: int
  answer: asyncio.Future


class MicroBatcher:
  """Runs submitted items in batches; use as `async with MicroBatcher(...) as batcher:`.

  Args:
    run: the batched function (see `Run`); an exception fails that call's requests only.
    max_rows: the most rows one call takes; an item brings `rows` of them.
    wait_s: how long the first request of a batch waits for others to join it.
    gather: False runs every request in a call of its own (no micro-batching), for comparison.
  """

  def __init__(self, run: Run, *, max_rows: int, wait_s: float, gather: bool = True):
    if max_rows < 1 or wait_s < 0:
      raise ValueError(f'max_rows must be >= 1 and wait_s >= 0, got {max_rows} and {wait_s}')
    self._run, self.max_rows, self._wait_s, self._gather_more = run, max_rows, wait_s, gather
    self.counts = collections.Counter()  # calls, requests, rows and seconds in calls so far
    self._queue: asyncio.Queue[_Pending] | None = None

  async def __aenter__(self) -> 'MicroBatcher':
    self._queue = asyncio.Queue()
    # One worker: calls run one after another, each with the whole machine to itself.
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='batch')
    self._task = asyncio.create_task(self._serve())
    return self

  async def __aexit__(self, *unused_exc_info):
    self._task.cancel()
    await asyncio.gather(self._task, return_exceptions=True)
    self._executor.shutdown(wait=True)

  async def submit(self, group: Hashable, item: Any, rows: int = 1) -> Any:
    """The result of `run(group, [..., item, ...])` for this item."""
    if not 1 <= rows <= self.max_rows:
      raise ValueError(f'an item brings 1 to {self.max_rows} rows, got {rows}')
    if self._queue is None:
      raise RuntimeError('submit inside `async with batcher:`')
    answer = asyncio.get_running_loop().create_future()
    self._queue.put_nowait(_Pending(group, item, rows, answer))
    return await answer

  async def _serve(self):
    while True:
      pending = await self._gather()
      for group, chunk in _chunks(pending, self.max_rows):
        await self._call(group, chunk)

  async def _gather(self) -> list[_Pending]:
    pending = [await self._queue.get()]
    deadline = asyncio.get_running_loop().time() + self._wait_s
    while self._gather_more and sum(p.rows for p in pending) < self.max_rows:
      try:
        # A `get` cancelled by the timeout leaves its item in the queue: nothing is lost.
        async with asyncio.timeout_at(deadline):
          pending.append(await self._queue.get())
      except TimeoutError:
        break
    return pending

  async def _call(self, group: Hashable, chunk: list[_Pending]):
    self.counts.update(calls=1, requests=len(chunk), rows=sum(p.rows for p in chunk))
    start = time.perf_counter()
    try:
      results = await asyncio.get_running_loop().run_in_executor(
          self._executor, self._run, group, [p.item for p in chunk])
    except Exception as error:  # pylint: disable=broad-except  # the server must keep serving
      for p in chunk:
        if not p.answer.done():
          p.answer.set_exception(error)
      return
    finally:
      self.counts['seconds'] += time.perf_counter() - start
    for p, result in zip(chunk, results, strict=True):
      if not p.answer.done():  # a request whose client went away is cancelled
        p.answer.set_result(result)


def _chunks(pending: list[_Pending], max_rows: int) -> list[tuple[Hashable, list[_Pending]]]:
  """The requests by group in arrival order, each group cut into calls of at most max_rows."""
  groups = collections.defaultdict(list)
  for p in pending:
    groups[p.group].append(p)
  chunks = []
  for group, members in groups.items():
    chunk, rows = [], 0
    for p in members:
      if rows + p.rows > max_rows:
        chunks.append((group, chunk))
        chunk, rows = [], 0
      chunk.append(p)
      rows += p.rows
    chunks.append((group, chunk))
  return chunks
