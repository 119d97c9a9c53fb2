"""A bounded load test of an `experiments.serve` server on this machine.

  python -m experiments.load_test --url=http://127.0.0.1:8000 --requests=400 --concurrency=32
  python -m experiments.load_test --requests=40 --concurrency=1 --num_words=5 --heavy_words=100
  python -m experiments.load_test --stream --requests=400 --concurrency=32

Sends `--requests` generation requests from `--concurrency` clients at once, each client sending
its next request when the last is answered, and stops when all are answered or given up on
(`--timeout_s` each). With `--heavy_words`, one more client sends heavy requests (that many
words, `--heavy_samples` samples, top-p `--heavy_top_p`) back to back meanwhile: how long the
others wait behind them. Prints latency percentiles, requests per second and the generator calls
the server made meanwhile (from /api/health). With `--stream` the requests read /api/stream
instead, and the report adds the time to each one's first words. Only loopback addresses are
accepted.
"""

import ipaddress
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent import futures

from absl import flags
import numpy as np

from experiments import config_flags
from rnn_jax.errors import UserError

flags.DEFINE_string('url', 'http://127.0.0.1:8000', 'The server, on this machine.')
flags.DEFINE_integer('requests', 400, 'Requests to send in all.', lower_bound=1,
                     upper_bound=100_000)
flags.DEFINE_integer('concurrency', 32, 'Clients sending at once.', lower_bound=1,
                     upper_bound=1024)
flags.DEFINE_string('seed_text', 'A neural network', 'The text every request continues.')
flags.DEFINE_integer('num_words', 50, 'Words per request.', lower_bound=1)
flags.DEFINE_float('temperature', 0.75, 'Temperature of every request.', lower_bound=0)
flags.DEFINE_float('timeout_s', 120, 'A request not answered in this time counts as lost.',
                   lower_bound=0.1)
flags.DEFINE_integer('heavy_words', 0, 'Words of the heavy requests sent meanwhile; 0: none.',
                     lower_bound=0)
flags.DEFINE_integer('heavy_samples', 8, 'Samples of each heavy request.', lower_bound=1)
flags.DEFINE_float('heavy_top_p', 0.9, 'Top-p of each heavy request.')
flags.DEFINE_bool('stream', False, 'Read each continuation from /api/stream as it is written.')
FLAGS = flags.FLAGS


def run_load(url: str, body: dict, requests: int, concurrency: int, timeout_s: float,
             heavy: dict | None = None, stream: bool = False) -> dict:
  """POSTs `body` to {url}/api/generate `requests` times from `concurrency` threads (or with
  `stream`, GETs /api/stream with it as the query), and `heavy` (if given) back to back from
  one more thread meanwhile.

  Returns counts (answered 200, refused with another status, lost without an answer), latency
  percentiles of the answered in ms (to the first words too, when streaming), requests answered
  per second over the whole run, the server's generator calls during the run with their rows
  and the seconds they took, and the heavy requests answered with their median latency.
  """
  url = url.rstrip('/')
  _check_loopback(url)
  before = _get_json(url + '/api/health', timeout_s)['batching']
  payload = json.dumps(body).encode()
  done, heavy_outcomes = threading.Event(), []
  if heavy:
    sender = threading.Thread(target=_post_until, args=(
        url + '/api/generate', json.dumps(heavy).encode(), timeout_s, done, heavy_outcomes))
    sender.start()
  start = time.perf_counter()
  streamed = f'{url}/api/stream?{urllib.parse.urlencode(body)}'
  send = ((lambda _: _read_stream(streamed, timeout_s)) if stream else
          (lambda _: _post(url + '/api/generate', payload, timeout_s)))
  with futures.ThreadPoolExecutor(concurrency) as pool:
    outcomes = list(pool.map(send, range(requests)))
  seconds = time.perf_counter() - start
  done.set()
  if heavy:
    sender.join()
  after = _get_json(url + '/api/health', timeout_s)['batching']
  latencies = np.array([ms for status, ms, _ in outcomes if status == 200])
  first_words = np.array([ms for status, _, ms in outcomes if status == 200 and ms is not None])
  refused = [status for status, _, _ in outcomes if status not in (200, None)]
  calls = after.get('calls', 0) - before.get('calls', 0)
  busy = after.get('seconds', 0) - before.get('seconds', 0)
  return {
      'requests': requests, 'concurrency': concurrency, 'answered': len(latencies),
      'refused': len(refused), 'lost': sum(status is None for status, _, _ in outcomes),
      'p50_ms': _percentile(latencies, 50), 'p95_ms': _percentile(latencies, 95),
      'max_ms': _percentile(latencies, 100), 'requests_per_s': round(len(latencies) / seconds, 1),
      'seconds': round(seconds, 2), 'generator_calls': calls,
      'rows_per_call': round((after.get('rows', 0) - before.get('rows', 0)) / max(calls, 1), 2),
      'generator_seconds': round(busy, 2), 'heavy_answered': len(heavy_outcomes),
      'heavy_p50_ms': _percentile(np.array([ms for _, ms, _ in heavy_outcomes]), 50)} | (
          {'first_words_p50_ms': _percentile(first_words, 50),
           'first_words_p95_ms': _percentile(first_words, 95)} if stream else {})


def _check_loopback(url: str):
  host = urllib.parse.urlsplit(url).hostname
  try:
    addresses = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, None)}
  except (OSError, ValueError):
    raise UserError(f'cannot resolve the host of {url}') from None
  if not all(address.is_loopback for address in addresses):
    raise UserError(f'the load test sends traffic to this machine only, not to {host}')


def _post(url: str, payload: bytes, timeout_s: float) -> tuple[int | None, float, None]:
  """(status, ms, None); status None when no answer came."""
  request = urllib.request.Request(url, payload, {'Content-Type': 'application/json'})
  start = time.perf_counter()
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
      answer.read()
      status = answer.status
  except urllib.error.HTTPError as e:
    status = e.code
  except OSError:  # refused, reset or timed out
    status = None
  return status, (time.perf_counter() - start) * 1000, None


def _read_stream(url: str, timeout_s: float) -> tuple[int | None, float, float | None]:
  """(status, ms to the end, ms to the first words); status None when no answer came."""
  start, first = time.perf_counter(), None
  try:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
      for line in answer:  # each line as it arrives
        if first is None and line.startswith(b'event: words'):
          first = (time.perf_counter() - start) * 1000
      status = answer.status
  except urllib.error.HTTPError as e:
    status = e.code
  except OSError:
    status = None
  return status, (time.perf_counter() - start) * 1000, first


def _post_until(url: str, payload: bytes, timeout_s: float, done: threading.Event,
                outcomes: list[tuple[int | None, float, None]]):
  while not done.is_set():
    outcomes.append(_post(url, payload, timeout_s))


def _get_json(url: str, timeout_s: float) -> dict:
  try:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
      return json.load(answer)
  except OSError as e:
    raise UserError(f'no server answers at {url}: {e}') from None


def _percentile(values: np.ndarray, q: float) -> float | None:
  return round(float(np.percentile(values, q)), 1) if len(values) else None


def main(argv):
  del argv
  body = {'seed_text': FLAGS.seed_text, 'num_words': FLAGS.num_words,
          'temperature': FLAGS.temperature}
  heavy = body | {'num_words': FLAGS.heavy_words, 'num_samples': FLAGS.heavy_samples,
                  'top_p': FLAGS.heavy_top_p} if FLAGS.heavy_words else None
  report = run_load(FLAGS.url, body, FLAGS.requests, FLAGS.concurrency, FLAGS.timeout_s, heavy,
                    FLAGS.stream)
  print(f'{report["answered"]} of {report["requests"]} answered ({report["refused"]} refused, '
        f'{report["lost"]} lost) from {report["concurrency"]} clients: p50 {report["p50_ms"]} ms, '
        f'p95 {report["p95_ms"]} ms, {report["requests_per_s"]} requests/s, '
        f'{report["rows_per_call"]} rows per generator call, generator busy '
        f'{report["generator_seconds"]} s of {report["seconds"]} s'
        + (f'; {report["heavy_answered"]} heavy requests meanwhile, p50 '
           f'{report["heavy_p50_ms"]} ms' if heavy else '')
        + (f'; first words p50 {report["first_words_p50_ms"]} ms, p95 '
           f'{report["first_words_p95_ms"]} ms' if FLAGS.stream else ''))
  print(json.dumps(report))
  if report['answered'] != report['requests']:
    raise UserError('not every request was answered')


if __name__ == '__main__':
  config_flags.run(main)
