"""The server against slow clients, long requests and random input: a real uvicorn server on a
free port, raw sockets, and hypothesis."""

import asyncio
import contextlib
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import NamedTuple

from hypothesis import given, settings, strategies as st
import pytest

from rnn_jax.serve import batching
from rnn_jax.serve import serving
from rnn_jax.serve import web

from conftest import running_server

LIMITS = serving.Limits(batch_sizes=(1, 4), max_words=16, chunk_words=2, max_samples=4,
                        max_seed_chars=200, top_k_choices=(0,), top_p_choices=(1.0, 0.9))
TIMEOUT_S = 0.5  # the server's keep-alive timeout and request deadline
LATE_S = 3.0  # past the deadline by this much, on a loaded machine, a connection counts as held


class Answer(NamedTuple):
  status: int
  body: bytes
  headers: Mapping[str, str]


@pytest.fixture(scope='module')
def service(trained):
  workdir, _ = trained
  served = serving.Service(workdir, limits=LIMITS, wait_s=0.01)
  served.warm_up()
  return served


@pytest.fixture(scope='module')
def server(service):
  """(address, the errors it logged): the app under uvicorn, in a thread."""
  with running_server(web.app(service), TIMEOUT_S) as running:
    yield running


def request(address, method: str, path: str, body: bytes | None = None) -> Answer:
  """One request on a connection of its own."""
  url = f'http://{address[0]}:{address[1]}{path}'
  try:
    with urllib.request.urlopen(urllib.request.Request(url, body, method=method),
                                timeout=30) as answer:
      return Answer(answer.status, answer.read(), answer.headers)
  except urllib.error.HTTPError as e:
    return Answer(e.code, e.read(), e.headers)


def seconds_until_closed(connection: socket.socket, drip: bytes = b'') -> tuple[float, bytes]:
  """(seconds until the server closes the connection, what it answered), sending `drip` a byte
  every 0.2 s meanwhile."""
  start = time.monotonic()
  connection.settimeout(0.2)
  answer, drip = b'', iter(drip)
  while time.monotonic() - start < TIMEOUT_S + LATE_S:
    try:
      data = connection.recv(4096)
    except TimeoutError:
      byte = next(drip, None)
      with contextlib.suppress(OSError):  # closed meanwhile: the next recv says so
        if byte is not None:
          connection.send(bytes([byte]))
      continue
    except ConnectionResetError:
      data = b''
    if not data:
      return time.monotonic() - start, answer
    answer += data
  raise AssertionError(f'the connection was held {TIMEOUT_S + LATE_S} s')


def connect(address, sent: bytes = b'') -> socket.socket:
  connection = socket.create_connection(address)
  connection.sendall(sent)
  return connection


def test_connections_that_send_nothing_are_closed_after_the_timeout(server):
  address, _ = server
  connections = [connect(address) for _ in range(20)]
  try:
    closed = [seconds_until_closed(c) for c in connections]
  finally:
    for c in connections:
      c.close()
  assert all(answer == b'' for _, answer in closed) and closed[0][0] >= TIMEOUT_S - 0.1


def test_a_head_sent_a_byte_at_a_time_is_cut_off_at_the_deadline(server):
  address, _ = server
  with connect(address, b'GET /api/health HTTP/1.1\r\nHost: test\r\n') as connection:
    seconds, answer = seconds_until_closed(connection, drip=b'X-Slow: ' + b'a' * 100)
  assert answer == b'' and seconds >= TIMEOUT_S - 0.1


def test_a_body_shorter_than_its_content_length_is_cut_off_without_an_error(server):
  address, errors = server
  head = (b'POST /api/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n'
          b'Content-Length: 100\r\n\r\n')
  with connect(address, head + b'{"seed_tex') as connection:
    seconds, answer = seconds_until_closed(connection)
  assert answer == b'' and seconds >= TIMEOUT_S - 0.1
  assert not errors, [record.getMessage() for record in errors]


def test_an_idle_connection_is_closed_after_its_answer_and_the_timeout(server):
  address, _ = server
  with connect(address, b'GET /api/health HTTP/1.1\r\nHost: test\r\n\r\n') as connection:
    seconds, answer = seconds_until_closed(connection)
  assert answer.startswith(b'HTTP/1.1 200 ') and b'x-content-type-options: nosniff' in answer
  assert seconds >= TIMEOUT_S - 0.1


def test_a_request_takes_a_call_per_chunk_of_words(server):
  address, _ = server
  calls = lambda: json.loads(request(address, 'GET', '/api/health').body)['batching'].get(
      'calls', 0)
  before = calls()
  body = json.dumps({'seed_text': 'alpha beta', 'num_words': 15, 'num_samples': 3}).encode()
  answer = request(address, 'POST', '/api/generate', body)
  assert answer.status == 200 and calls() - before == 8  # 15 words, 2 a call
  assert [len(s['generated'].split()) for s in json.loads(answer.body)['samples']] == [15] * 3


@pytest.mark.parametrize('path, message', [
    (f'/?seed_text=alpha&num_words={10**309}', 'num_words must be from 1 to 16, got 1000'),
    (f'/random?top_k={10**309}', 'top_k must be one of 0, got 1000'),
    (f'/random?rng_seed={10**309}', 'rng_seed must be from 0 to 4294967295, got 1000')])
def test_pages_refuse_numbers_past_float_range_with_the_message(server, path, message):
  page = request(server[0], 'GET', path)
  assert page.status == 400 and message in page.body.decode()


def test_every_answer_is_marked_nosniff_and_a_405_names_the_methods(server):
  address, _ = server
  answers = [request(address, *sent) for sent in [
      ('GET', '/api/health'), ('GET', '/'), ('GET', '/nothing'),
      ('POST', '/api/generate', b'{"seed_text": "alpha"}'), ('POST', '/api/generate', b'{}'),
      ('GET', '/api/generate'), ('POST', '/api/generate', b'x' * 20_000)]]
  assert [a.status for a in answers] == [200, 200, 404, 200, 400, 405, 413]
  assert all(a.headers['x-content-type-options'] == 'nosniff' for a in answers)
  assert answers[5].headers['allow'] == 'POST'
  assert "default-src 'none'" in answers[1].headers['content-security-policy']


def test_the_next_part_of_a_request_does_not_wait_for_company():
  def run(unused_group, items):
    return items

  async def parts():
    async with batching.MicroBatcher(run, max_rows=4, wait_s=3600) as batcher:
      await batcher.submit('a', 'part 1', 4)  # a full call: it waits for nobody
      return await asyncio.wait_for(batcher.submit('a', 'part 2', 1, continues=True), 10)

  assert asyncio.run(parts()) == 'part 2'


def test_a_short_request_is_answered_between_the_calls_of_a_long_one():
  """Whatever its group, a request that comes during a long one's call has its own call before
  the long one's next but one."""
  calls, first_answered = [], asyncio.Event()

  def run(unused_group, items):
    calls.append(items)
    time.sleep(0.01)
    return items

  async def long(batcher):
    for part in range(6):
      await batcher.submit('long', f'long {part}', 4, continues=part > 0)
      first_answered.set()

  async def short(batcher):
    await first_answered.wait()
    await batcher.submit('short', 'short', 1)

  async def both():
    async with batching.MicroBatcher(run, max_rows=4, wait_s=0.01) as batcher:
      await asyncio.wait_for(asyncio.gather(long(batcher), short(batcher)), 60)

  asyncio.run(both())
  assert calls.index(['short']) <= 2 and len(calls) == 7


TEXTS = st.text(st.characters() | st.characters(categories=['Cs']), max_size=20)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(10**300, 10**400) | st.floats()
    | TEXTS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXTS, inner, max_size=3),
    max_leaves=8)
FIELD_VALUES = {
    'seed_text': st.sampled_from(['alpha beta', 'gamma delta epsilon', 'nothing known', '']),
    'num_words': st.integers(0, 17), 'temperature': st.floats(0, 2.01),
    'top_k': st.sampled_from([0, 0, 3]), 'top_p': st.sampled_from([1.0, 1.0, 0.5]),
    'num_samples': st.integers(1, 5), 'rng_seed': st.integers(0, 2**32)}
BODIES = st.one_of(
    st.fixed_dictionaries({'seed_text': FIELD_VALUES['seed_text']}, optional={
        name: values for name, values in FIELD_VALUES.items() if name != 'seed_text'}).map(
            json.dumps),
    st.fixed_dictionaries({}, optional={name: values | JSON_VALUES
                                        for name, values in FIELD_VALUES.items()}).map(json.dumps),
    st.dictionaries(TEXTS, JSON_VALUES, max_size=3).map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.integers(1, 8000).map(lambda depth: '[' * depth + ']' * depth),
    st.binary(max_size=40))
QUERY_VALUES = (st.text(max_size=20) | st.integers().map(str) | st.integers(10**300).map(str)
                | st.sampled_from(['nan', '-inf', '1e309', '0x10', '\u0663', ' 4 ']))
QUERIES = st.one_of(
    st.dictionaries(st.sampled_from([*FIELD_VALUES, 'bogus']) | st.text(max_size=4),
                    QUERY_VALUES, max_size=4).map(urllib.parse.urlencode),
    st.binary(max_size=40).map(urllib.parse.quote_from_bytes))


def assert_answered(answer: Answer, api: bool):
  assert 200 <= answer.status < 300 or 400 <= answer.status < 500, answer[:2]
  assert answer.headers['x-content-type-options'] == 'nosniff'
  if api and answer.status >= 400:
    error = json.loads(answer.body)['error']
    assert error and '\n' not in error, error


def test_random_json_bodies_are_answered_2xx_or_4xx_and_serving_goes_on(server):
  address, errors = server

  @settings(max_examples=80, deadline=None, database=None)
  @given(BODIES)
  def post(body):
    body = body if isinstance(body, bytes) else body.encode()
    assert_answered(request(address, 'POST', '/api/generate', body), api=True)

  post()
  assert request(address, 'GET', '/api/health').status == 200 and not errors


def test_random_query_strings_are_answered_2xx_or_4xx_and_serving_goes_on(server):
  address, errors = server

  @settings(max_examples=80, deadline=None, database=None)
  @given(st.sampled_from(['/api/random', '/', '/random']), QUERIES)
  def get(path, query):
    assert_answered(request(address, 'GET', f'{path}?{query}'), api=path.startswith('/api/'))

  get()
  assert request(address, 'GET', '/api/health').status == 200 and not errors
