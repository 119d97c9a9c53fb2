"""Micro-batching: requests that arrive together are answered by one call of a batched function.

A server's handlers `submit` their work and await the answer. One task on the event loop takes
the first waiting request, gathers those that arrive within `wait_s` (or until `max_rows` rows
are waiting), groups them by what must be equal inside one call (a group key), and runs each
group's call in a worker thread, so the event loop keeps accepting requests meanwhile. Requests
that arrive during a call wait for the next, which makes batches grow with the load. A request
whose work takes several calls submits each part once the last is answered: it goes to the back
of the queue, behind those that arrived meanwhile, so the requests take turns.
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
  continues: bool


class MicroBatcher:
  """Runs submitted items in batches; use as `async with MicroBatcher(...) as batcher:`.

  Args:
    run: the batched function (see `Run`); an exception fails that call's requests only.
    max_rows: the most rows one call takes; an item brings `rows` of them.
    wait_s: how long the first request of a batch waits for others to join it; an item that
      continues a request does not wait: whatever could join it arrived during the last call.
    gather: False runs every request in a call of its own (no micro-batching), for comparison.
  """

  def __init__(self, run: Run, *, max_rows: int, wait_s: float, gather: bool = True):
    if max_rows < 1 or wait_s < 0:
      raise ValueError(f'max_rows must be >= 1 and wait_s >= 0, got {max_rows} and {wait_s}')
    self._run, self.max_rows, self._wait_s, self._gather_more = run, max_rows, wait_s, gather
    self.counts = collections.Counter()  # calls, items, rows and seconds in calls so far
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

  async def submit(self, group: Hashable, item: Any, rows: int = 1, *,
                   continues: bool = False) -> Any:
    """The result of `run(group, [..., item, ...])` for this item; `continues` marks the next
    part of a request whose last part was just answered."""
    if not 1 <= rows <= self.max_rows:
      raise ValueError(f'an item brings 1 to {self.max_rows} rows, got {rows}')
    if self._queue is None:
      raise RuntimeError('submit inside `async with batcher:`')
    answer = asyncio.get_running_loop().create_future()
    self._queue.put_nowait(_Pending(group, item, rows, answer, continues))
    return await answer

  async def _serve(self):
    while True:
      # A request whose client went away (its answer cancelled) takes no rows of a call.
      pending = [p for p in await self._gather() if not p.answer.done()]
      for group, call in _calls(pending, self.max_rows):
        await self._call(group, call)

  async def _gather(self) -> list[_Pending]:
    pending = [await self._queue.get()]
    deadline = asyncio.get_running_loop().time() + (0 if pending[0].continues else self._wait_s)
    while self._gather_more and sum(p.rows for p in pending) < self.max_rows:
      try:
        # A `get` cancelled by the timeout leaves its item in the queue: nothing is lost.
        async with asyncio.timeout_at(deadline):
          pending.append(await self._queue.get())
      except TimeoutError:
        break
    return pending

  async def _call(self, group: Hashable, call: list[_Pending]):
    self.counts.update(calls=1, items=len(call), rows=sum(p.rows for p in call))
    start = time.perf_counter()
    try:
      results = await asyncio.get_running_loop().run_in_executor(
          self._executor, self._run, group, [p.item for p in call])
    except Exception as error:  # pylint: disable=broad-except  # the server must keep serving
      for p in call:
        if not p.answer.done():
          p.answer.set_exception(error)
      return
    finally:
      self.counts['seconds'] += time.perf_counter() - start
    for p, result in zip(call, results, strict=True):
      if not p.answer.done():  # a request whose client went away is cancelled
        p.answer.set_result(result)


def _calls(pending: list[_Pending], max_rows: int) -> list[tuple[Hashable, list[_Pending]]]:
  """The requests by group in arrival order, each group cut into calls of at most max_rows."""
  groups = collections.defaultdict(list)
  for p in pending:
    groups[p.group].append(p)
  calls = []
  for group, members in groups.items():
    call, rows = [], 0
    for p in members:
      if rows + p.rows > max_rows:
        calls.append((group, call))
        call, rows = [], 0
      call.append(p)
      rows += p.rows
    calls.append((group, call))
  return calls
