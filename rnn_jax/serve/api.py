"""The JSON API of a `serving.Service`: `POST /api/generate`, `GET /api/random`, `GET /api/stream`
(server-sent events, `streaming`), `GET /api/health`. Bad input raises UserError, which the
application answers 400 with a one-line message.
"""

import json
from collections.abc import Mapping
from typing import Any

from starlette import responses
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rnn_jax.errors import UserError
from rnn_jax.serve import serving
from rnn_jax.serve import streaming


class JSONResponse(responses.JSONResponse):
  """JSON in ASCII: a text that the request's JSON held, half a surrogate pair included, goes
  back escaped as it came, which UTF-8 could not encode."""

  def render(self, content: Any) -> bytes:
    return json.dumps(content, allow_nan=False, separators=(',', ':')).encode('ascii')


class Api:
  """The JSON endpoints."""

  def __init__(self, service: serving.Service):
    self._service = service

  async def generate(self, request: Request) -> Response:
    fields = await _json_object(request)
    _refuse_unknown(fields, {'seed_text', *serving.Settings.FIELDS})
    settings = serving.Settings.parse(fields, self._service.limits)
    return _json(await self._service.continue_text(fields.get('seed_text'), settings))

  async def random(self, request: Request) -> Response:
    _refuse_unknown(request.query_params, set(serving.Settings.FIELDS))
    settings = serving.Settings.parse(request.query_params, self._service.limits)
    return _json(await self._service.continue_passage(settings))

  async def stream(self, request: Request) -> Response:
    """The continuation of ?seed_text=... as it is generated (`streaming`)."""
    query = request.query_params
    _refuse_unknown(query, {'seed_text', *serving.Settings.FIELDS})
    settings = serving.Settings.parse(query, self._service.limits)
    events = streaming.events(self._service, query.get('seed_text'), settings)
    # no-transform, and nginx's own header: a proxy that buffers would hold the words back.
    return StreamingResponse(events, media_type='text/event-stream',
                             headers={'Cache-Control': 'no-store, no-transform',
                                      'X-Accel-Buffering': 'no'})

  async def health(self, unused_request: Request) -> Response:
    return JSONResponse(self._service.health())


def _refuse_unknown(fields: Mapping[str, Any], known: set[str]):
  unknown = sorted(set(fields) - known)
  if unknown:
    names = serving.cut(', '.join(map(repr, unknown)))
    raise UserError(f'unknown field{"s" * (len(unknown) > 1)}: {names}')


async def _json_object(request: Request) -> dict[str, Any]:
  try:
    fields = json.loads(await request.body(), parse_int=_integer)
  except RecursionError:
    raise UserError('the body must be a JSON object: it nests too deeply') from None
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise UserError(f'the body must be a JSON object: {e}') from None
  if not isinstance(fields, dict):
    raise UserError(f'the body must be a JSON object, got {type(fields).__name__}')
  return fields


def _integer(digits: str) -> int:
  try:
    return int(digits)
  except ValueError:  # past Python's limit on the digits of an integer string (4,300)
    raise UserError(f'the body holds an integer of {len(digits.lstrip("-")):,} digits, more '
                    f'than any field takes') from None


def _json(continuations: serving.Continuations) -> JSONResponse:
  answer = {'seed': continuations.seed, 'unknown_words': continuations.unknown_words,
            'samples': [sample._asdict() for sample in continuations.samples],
            **vars(continuations.settings)}
  if continuations.actual is not None:
    answer['actual'] = continuations.actual
  return JSONResponse(answer)


