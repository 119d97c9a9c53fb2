"""The HTTP server: uvicorn, with a deadline on each request for clients that send slowly.

uvicorn closes a connection that stays idle `timeout_keep_alive` seconds after a response, but
it starts no clock before a connection's first request, and any byte stops the clock: a client
that connects and sends nothing, sends its head a byte at a time, or sends less body than its
Content-Length says holds its connection forever. `_Protocol` gives every request those same
seconds to arrive whole, head and body, counted from the connection's opening or from the last
response, and then closes the connection. That bounds what one slow client holds, no more: a
deployment puts a reverse proxy in front, which buffers requests (docs/reliability.md).
"""

import asyncio

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol


def config(app: ASGIApp, host: str, port: int, *, timeout_s: float,
           max_connections: int) -> uvicorn.Config:
  """How uvicorn serves `app`: `timeout_s` is the keep-alive timeout and each request's
  deadline (`_Protocol`); past `max_connections` connections or requests in flight, a request
  is answered 503. h11's own limit of 16 KiB on a request's head stays."""
  return uvicorn.Config(app, host=host, port=port, http=_Protocol, timeout_keep_alive=timeout_s,
                        limit_concurrency=max_connections, access_log=False)


class _Protocol(H11Protocol):
  """uvicorn's h11 protocol, which closes a connection whose request has not arrived whole
  `timeout_keep_alive` seconds after the connection opened or the last response was sent."""

  _deadline: asyncio.TimerHandle | None = None

  def connection_made(self, transport: asyncio.Transport):  # type: ignore[override]
    super().connection_made(transport)
    self._watch(restart=True)

  def data_received(self, data: bytes):
    super().data_received(data)
    self._watch()

  def on_response_complete(self):
    super().on_response_complete()
    self._watch(restart=True)

  def connection_lost(self, exc: Exception | None):
    super().connection_lost(exc)
    self._watch()

  def _watch(self, restart: bool = False):
    """Starts the clock while a request is awaited, or restarts it; stops it once one is in."""
    awaited = (self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
               and not self.transport.is_closing())
    if self._deadline is not None and (restart or not awaited):
      self._deadline.cancel()
      self._deadline = None
    if awaited and self._deadline is None:
      self._deadline = self.loop.call_later(self.timeout_keep_alive, self.transport.close)
