"""The generation pages and JSON API (`api`) of a `serving.Service`, as a Starlette application.

Pages (plain HTML forms, no script): `/` continues the user's text, `/random` a random passage
beside its real continuation, `/game` plays human or machine. `/stream` is the one page with a
script (`static/stream.js`, served from here): the continuation word by word, shaded by its
probability, with the likeliest alternatives of each word. Bad input is answered 4xx with a
one-line message, as JSON under /api/ and as a page elsewhere. Every text that comes from a
request or the model is HTML-escaped where it is written into a page (the script writes text
only as text); JSON is written in ASCII, and every response is marked nosniff.
"""

import collections
import contextlib
import html
import secrets
from collections.abc import Mapping
from pathlib import Path
import urllib.parse

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rnn_jax.errors import UserError
from rnn_jax.serve import api
from rnn_jax.serve import game
from rnn_jax.serve import serving

MAX_BODY_BYTES = 16_384
MAX_ROUNDS = 10_000  # rounds dealt and not yet answered; the oldest are forgotten first
MAX_SCORE = 1_000_000
SEED_TAIL_WORDS = 6  # words of the seed shown before each continuation
PAGE_HEADERS = {  # no script runs on these pages, whatever a text slipped past escaping
    'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"}
# The streaming page runs its own script, from this server, and reads the stream from it alone.
STREAM_PAGE_HEADERS = {
    'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; "
                               "script-src 'self'; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'"}
STREAM_SCRIPT = (Path(__file__).parent / 'static' / 'stream.js').read_text()
# A browser must not take a JSON answer, which quotes what the request sent, for a page.
NOSNIFF = (b'x-content-type-options', b'nosniff')
STYLE = """
body { font-family: Georgia, serif; max-width: 46em; margin: 1em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
nav a { margin-right: 1.2em; } .model { color: #666; font-size: 0.85em; }
textarea { width: 100%; font: inherit; } .settings { display: flex; flex-wrap: wrap;
  gap: 0.6em 1.4em; margin: 0.6em 0; } input[type=number] { width: 5em; }
.error { color: #a00; font-weight: bold; } .seed { background: #f3f1ea; padding: 0.5em; }
.tail { color: #888; } .generated { font-weight: bold; } .actual { color: #063; }
.logprob { color: #888; font-size: 0.8em; } li { margin-bottom: 0.7em; }
.word { cursor: pointer; border-radius: 3px; padding: 0 1px; } #alternatives { color: #444; }
.human { color: #063; } .machine { color: #805; } .score { font-size: 1.1em; }
"""


def app(service: serving.Service) -> ASGIApp:
  """The application; its lifespan runs the service's micro-batcher."""
  pages, endpoints = _Pages(service), api.Api(service)

  @contextlib.asynccontextmanager
  async def lifespan(unused_app):
    async with service.batcher:
      yield

  routes = [Route('/', pages.generate), Route('/random', pages.random),
            Route('/game', pages.game, methods=['GET', 'POST']),
            Route('/stream', pages.stream),
            Route('/api/generate', endpoints.generate, methods=['POST']),
            Route('/api/random', endpoints.random), Route('/api/stream', endpoints.stream),
            Route('/api/health', endpoints.health), Route('/static/stream.js', _stream_script)]
  handlers = {HTTPException: _http_error, UserError: _user_error, ClientDisconnect: _gone}
  # Outside Starlette's own middleware, so that its answers (413, 500) are marked too.
  return _NoSniff(Starlette(routes=routes, lifespan=lifespan, max_body_size=MAX_BODY_BYTES,
                            exception_handlers=handlers))


class _NoSniff:
  """An ASGI app whose responses all carry NOSNIFF."""

  def __init__(self, inner: ASGIApp):
    self._inner = inner

  async def __call__(self, scope: Scope, receive: Receive, send: Send):
    async def send_marked(message: Message):
      if message['type'] == 'http.response.start':
        message = {**message, 'headers': [*message.get('headers', []), NOSNIFF]}
      await send(message)

    await self._inner(scope, receive, send_marked)


def _is_api(request: Request) -> bool:
  return request.url.path.startswith('/api/')


def _http_error(request: Request, error: HTTPException) -> Response:
  if _is_api(request):
    return api.JSONResponse({'error': error.detail}, error.status_code, error.headers)
  return _page('Error', _error(error.detail), error.status_code, error.headers)


def _user_error(request: Request, error: UserError) -> Response:
  if _is_api(request):
    return api.JSONResponse({'error': str(error)}, 400)
  return _page('Error', _error(str(error)), 400)


def _gone(unused_request: Request, unused_error: ClientDisconnect) -> Response:
  """Nobody reads this answer: it keeps a client that left mid-body out of the error log."""
  return Response(status_code=400)


class _Pages:
  """The HTML pages; a game's rounds wait here, by a random id, for their answer."""

  def __init__(self, service: serving.Service):
    self._service = service
    self._rounds: collections.OrderedDict[str, game.Round] = collections.OrderedDict()

  async def generate(self, request: Request) -> Response:
    query = request.query_params
    if 'seed_text' not in query:
      return self._generate_page(query, '')
    try:
      settings = serving.Settings.parse(query, self._service.limits)
      continuations = await self._service.continue_text(query['seed_text'], settings)
    except UserError as e:
      return self._generate_page(query, _error(str(e)), 400)
    return self._generate_page(query, self._continuations(continuations))

  def _generate_page(self, query: Mapping[str, str], results: str, status: int = 200) -> Response:
    form = (f'<form method="get" action="/" id="generate"><label for="seed_text">Seed text'
            f'</label><textarea id="seed_text" name="seed_text" rows="4" required>'
            f'{_e(query.get("seed_text", ""))}</textarea>{self._settings_form(query)}'
            f'<button type="submit" id="submit">Generate</button></form>')
    return self._page('Continue your text', form + results, status)

  async def stream(self, request: Request) -> Response:
    """The form; the script sends it to /api/stream and writes the words as they come."""
    query = request.query_params
    form = (f'<form method="get" action="/stream" id="stream-form"><label for="seed_text">Seed '
            f'text</label><textarea id="seed_text" name="seed_text" rows="4" required>'
            f'{_e(query.get("seed_text", ""))}</textarea>{self._settings_form(query)}'
            f'<button type="submit" id="submit">Generate</button></form>')
    results = ('<p class="error" id="stream-error"></p><p class="seed" id="seed"></p>'
               '<ol class="samples generated" id="stream" data-state="idle"></ol>'
               '<p class="logprob">Shade: the probability of each word under the model. Hover '
               'or click a word for the likeliest words in its place.</p>'
               '<div id="alternatives"></div><script src="/static/stream.js"></script>')
    return self._page('Watch it write', form + results, headers=STREAM_PAGE_HEADERS)

  async def random(self, request: Request) -> Response:
    query = request.query_params
    try:
      settings = serving.Settings.parse(query, self._service.limits)
      results = self._continuations(await self._service.continue_passage(settings))
      status = 200
    except UserError as e:
      results, status = _error(str(e)), 400
    form = (f'<form method="get" action="/random" id="random">{self._settings_form(query)}'
            f'<button type="submit" id="submit">Another passage</button></form>')
    return self._page('A random passage', form + results, status)

  async def game(self, request: Request) -> Response:
    """GET deals a round; POST (the round's form) answers it."""
    if request.method == 'POST':
      return self._answer(await _form(request))
    return await self._deal(request.query_params)

  async def _deal(self, query: Mapping[str, str]) -> Response:
    score, played = _score(query)
    game_round = await self._service.game_round()
    round_id = secrets.token_urlsafe(12)
    self._rounds[round_id] = game_round
    while len(self._rounds) > MAX_ROUNDS:
      self._rounds.popitem(last=False)
    choices = ''.join(
        f'<li><p class="continuation">... {_e(text)}</p><button type="submit" name="choice" '
        f'value="{number}" id="choice-{number}">A person wrote {number}</button></li>'
        for number, text in enumerate(game_round.continuations, 1))
    body = (f'<p>Two of these three continuations of a patent abstract were written by the '
            f'model, one by a person. Which one?</p>{_score_line(score, played)}'
            f'<p class="seed">{_e(game_round.seed)}</p>'
            f'<form method="post" action="/game" id="round">'
            f'<input type="hidden" name="round" value="{round_id}">'
            f'<input type="hidden" name="score" value="{score}">'
            f'<input type="hidden" name="played" value="{played}">'
            f'<ol class="choices">{choices}</ol></form>')
    return self._page('Human or machine?', body)

  def _answer(self, fields: dict[str, str]) -> Response:
    score, played = _score(fields)
    choices = [str(number) for number in range(1, game.CHOICES + 1)]
    if fields.get('choice') not in choices:
      raise UserError(f'choice must be one of {", ".join(choices)}')
    game_round = self._rounds.pop(fields.get('round', ''), None)
    if game_round is None:
      raise HTTPException(404, 'That round is over or unknown: start a new one at /game.')
    correct = int(fields['choice']) - 1 == game_round.human
    score, played = score + correct, played + 1
    shown = ''.join(
        f'<li class="{"human" if t is None else "machine"}"><p>... {_e(text)}</p>'
        f'<p class="author">{"human" if t is None else f"machine (diversity {t:.2f})"}</p></li>'
        for text, t in zip(game_round.continuations, game_round.temperatures))
    body = (f'<p class="verdict">{"Correct!" if correct else "Incorrect."} A person wrote '
            f'{game_round.human + 1}.</p>{_score_line(score, played)}'
            f'<p class="seed">{_e(game_round.seed)}</p><ol class="choices">{shown}</ol>'
            f'<p><a id="next" href="/game?score={score}&amp;played={played}">Next round</a></p>')
    return self._page('Human or machine?', body)

  def _settings_form(self, query: Mapping[str, str]) -> str:
    limits = self._service.limits
    value = lambda name, default: _e(query.get(name, str(default)))
    menu = lambda name, choices, off: (
        f'<select name="{name}" id="{name}">' + ''.join(
            f'<option value="{c:g}"{" selected" * (query.get(name) == f"{c:g}")}>'
            f'{off if c == choices[0] else f"{c:g}"}</option>' for c in choices) + '</select>')
    return (
        f'<div class="settings">'
        f'<label>Words <input type="number" name="num_words" id="num_words" min="1" '
        f'max="{limits.max_words}" value="{value("num_words", limits.default_words)}">'
        f'</label><label>Diversity (temperature) <input type="number" name="temperature" '
        f'id="temperature" min="0" max="{limits.max_temperature:g}" step="0.05" '
        f'value="{value("temperature", serving.Settings.temperature)}"></label>'
        f'<label>Top-k {menu("top_k", limits.top_k_choices, "all words")}</label>'
        f'<label>Top-p {menu("top_p", limits.top_p_choices, "off")}</label>'
        f'<label>Samples <input type="number" name="num_samples" id="num_samples" min="1" '
        f'max="{limits.max_samples}" value="{value("num_samples", 1)}"></label></div>')

  def _continuations(self, continuations: serving.Continuations) -> str:
    tail = _e(' '.join(continuations.seed.split()[-SEED_TAIL_WORDS:]))
    unknown = (f'<p class="unknown">Not in the vocabulary, left out: '
               f'{_e(", ".join(continuations.unknown_words))}</p>'
               if continuations.unknown_words else '')
    samples = ''.join(
        f'<li><span class="tail">... {tail}</span> <span class="generated">{_e(s.generated)}'
        f'</span> <span class="logprob">mean log-prob {s.mean_logprob:.2f}</span></li>'
        for s in continuations.samples)
    actual = (f'<p class="actual"><b>The real continuation:</b> <span class="tail">... {tail}'
              f'</span> <span id="actual">{_e(continuations.actual)}</span></p>'
              if continuations.actual is not None else '')
    return (f'<section id="results"><p class="seed">{_e(continuations.seed)}</p>{unknown}'
            f'<ol class="samples">{samples}</ol>{actual}<p class="logprob">rng_seed '
            f'{continuations.settings.rng_seed} replays these (API)</p></section>')

  def _page(self, title: str, body: str, status: int = 200,
            headers: Mapping[str, str] | None = None) -> Response:
    service = self._service
    model = (f'{type(service.model).__name__} ({service.config.model.cell}), '
             f'vocabulary {service.tokenizer.vocab_size:,}, '
             f'{service.checkpoint} checkpoint (step {service.step}), {service.mode} mode')
    return _page(title, f'<p class="model">{model}</p>{body}', status, headers)


def _page(title: str, body: str, status: int = 200,
          headers: Mapping[str, str] | None = None) -> HTMLResponse:
  document = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
              f'<meta name="viewport" content="width=device-width, initial-scale=1">'
              f'<title>rnn-jax: {_e(title)}</title><style>{STYLE}</style></head><body><nav>'
              f'<a href="/">Continue your text</a><a href="/stream">Watch it write</a>'
              f'<a href="/random">Random passage</a>'
              f'<a href="/game">Human or machine?</a></nav><h1>{_e(title)}</h1>{body}'
              f'</body></html>')
  # Texts come from the model and from forms and query strings, which decode what is not UTF-8
  # as U+FFFD; should half a surrogate pair still get in, it is shown as "?" rather than fail.
  return HTMLResponse(document.encode('utf-8', 'replace'), status,
                      headers=PAGE_HEADERS | dict(headers or {}))


def _stream_script(unused_request: Request) -> Response:
  return Response(STREAM_SCRIPT, media_type='text/javascript')


def _error(message: str) -> str:
  return f'<p class="error" id="error">{_e(message)}</p>'


def _e(text: str) -> str:
  return html.escape(text, quote=True)


async def _form(request: Request) -> dict[str, str]:
  """The fields of a form POST (urlencoded), the last value of each."""
  fields = urllib.parse.parse_qs((await request.body()).decode('utf-8', 'replace'))
  return {name: values[-1] for name, values in fields.items()}


def _score(fields: Mapping[str, str]) -> tuple[int, int]:
  """The running score a game page carries from round to round: (right, played)."""
  try:
    score, played = int(fields.get('score', 0)), int(fields.get('played', 0))
  except ValueError:
    raise UserError('score and played must be integers') from None
  if not 0 <= score <= played <= MAX_SCORE:
    raise UserError(f'the score must satisfy 0 <= score <= played <= {MAX_SCORE:,}')
  return score, played


def _score_line(score: int, played: int) -> str:
  return f'<p class="score" id="score">Score: {score} of {played}</p>'
