"""Streaming generation: /api/stream's events against /api/generate, over a real socket while
the generator works, a client that leaves, and the page in headless Chromium."""

import json
import math
import socket
import time
import urllib.parse

import numpy as np
import pytest
from starlette.testclient import TestClient

from rnn_jax.corpus import seeds
from rnn_jax.corpus import text
from rnn_jax.serve import serving
from rnn_jax.serve import streaming
from rnn_jax.serve import web

from conftest import running_server

LIMITS = serving.Limits(batch_sizes=(1, 4), max_words=16, chunk_words=4, max_samples=4,
                        max_seed_chars=200, top_k_choices=(0,), top_p_choices=(1.0,))
CALL_S = 0.3  # how long each generator call of the slow service takes at least
SETTINGS = {'seed_text': 'alpha beta gamma', 'num_words': 16, 'num_samples': 2,
            'temperature': 1.0, 'rng_seed': 11}


class SlowService(serving.Service):
  """A service whose generator calls take CALL_S: long enough to watch words arrive."""

  def _run(self, group, jobs):
    time.sleep(CALL_S)
    return super()._run(group, jobs)


def parse(stream: str) -> list[tuple[str, dict]]:
  """(event name, data) of each server-sent event."""
  events = []
  for block in stream.strip().split('\n\n'):
    fields = dict(line.split(': ', 1) for line in block.split('\n'))
    events.append((fields['event'], json.loads(fields['data'])))
  return events


@pytest.fixture(scope='module')
def service(trained):
  served = serving.Service(trained[0], limits=LIMITS, wait_s=0.01)
  served.warm_up()
  return served


@pytest.fixture(scope='module')
def client(service):
  with TestClient(web.app(service)) as test_client:
    yield test_client


def test_the_stream_writes_what_generate_writes_with_probabilities_and_alternatives(client):
  answer = client.get('/api/stream', params=SETTINGS)
  assert answer.status_code == 200
  assert answer.headers['content-type'].startswith('text/event-stream')
  events = parse(answer.text)
  names = [name for name, _ in events]
  assert names == ['start'] + ['words'] * math.ceil(16 / LIMITS.chunk_words) + ['end']
  assert events[0][1]['seed'] == 'alpha beta gamma' and events[0][1]['rng_seed'] == 11

  generated = client.post('/api/generate', json=SETTINGS).json()['samples']
  for row, sample in enumerate(generated):
    words = [word for _, data in events[1:-1] for word in data['samples'][row]]
    assert ''.join(word['text'] for word in words).strip() == sample['generated']
    mean_log_prob = sum(math.log(word['probability']) for word in words) / len(words)
    assert mean_log_prob == pytest.approx(sample['mean_logprob'], abs=2e-3)
    for word in words:
      likeliest = [alternative['probability'] for alternative in word['alternatives']]
      assert len(likeliest) == serving.ALTERNATIVES
      assert likeliest == sorted(likeliest, reverse=True) and sum(likeliest) <= 1 + 1e-3
      shown = {a['word']: a['probability'] for a in word['alternatives']}
      assert shown.get(word['word'], word['probability']) == word['probability']
      assert word['probability'] <= likeliest[0]


def test_the_words_texts_add_up_to_the_display_of_the_whole_sample():
  # pylint: disable=protected-access
  # The trained corpus has no punctuation: here the display glues some onto the word before it.
  tokenizer = text.Tokenizer(filters='')
  tokenizer.fit_on_texts(['a network , trained . on ; patents ? yes'])

  class Shown:
    def show(self, tokens):
      return seeds.show(tokenizer, tokens)

  rng = np.random.default_rng(0)
  for _ in range(20):
    seed, generated = rng.integers(1, tokenizer.vocab_size, size=(2, 12)).tolist()
    before = seed[-1:]
    texts = []
    for token in generated:
      texts.append(streaming._word(Shown(), before, token, 0.0, [], [])['text'])
      before = [token]
    whole = seeds.show(tokenizer, seed + generated)
    assert ''.join(texts) == whole[len(seeds.show(tokenizer, seed)):]


@pytest.mark.parametrize('query, message', [
    ({'seed_text': 'alpha', 'colour': 'red'}, "unknown field: 'colour'"),
    ({'seed_text': 'nothing known'}, 'leaves no word to start from'),
    ({'seed_text': 'alpha', 'num_words': 17}, 'num_words must be from 1 to 16, got 17'),
])
def test_a_bad_stream_request_is_answered_400_before_any_event(client, query, message):
  answer = client.get('/api/stream', params=query)
  assert answer.status_code == 400 and message in answer.json()['error']


def test_the_page_runs_its_own_script_only(client):
  page = client.get('/stream?seed_text=%3Cb%3Ebold%3C%2Fb%3E')
  assert '<script src="/static/stream.js"></script>' in page.text
  assert '&lt;b&gt;bold&lt;/b&gt;' in page.text and '<b>bold' not in page.text
  policy = page.headers['content-security-policy']
  assert "script-src 'self'" in policy and "connect-src 'self'" in policy
  assert "script-src" not in client.get('/').headers['content-security-policy']
  script = client.get('/static/stream.js')
  assert script.headers['content-type'].startswith('text/javascript')
  assert 'innerHTML' not in script.text  # text goes in as text


@pytest.fixture(scope='module')
def slow_server(trained):
  """(address, the batcher's counts): the slow service under uvicorn."""
  slow = SlowService(trained[0], limits=LIMITS, wait_s=0.01)
  slow.warm_up()
  with running_server(web.app(slow), timeout_s=5) as (address, errors):
    yield address, slow.batcher.counts
  assert not errors, [record.getMessage() for record in errors]


def open_stream(address, query: dict) -> socket.socket:
  connection = socket.create_connection(address, timeout=30)
  connection.sendall(f'GET /api/stream?{urllib.parse.urlencode(query)} HTTP/1.1\r\n'
                     f'Host: test\r\n\r\n'.encode())
  return connection


def read_until(connection: socket.socket, marker: bytes) -> bytes:
  received = b''
  while marker not in received:
    part = connection.recv(65536)
    assert part, f'the server closed the stream: {received!r}'
    received += part
  return received


def test_words_arrive_while_the_generator_still_works_and_a_client_that_leaves_frees_it(
    slow_server):
  address, counts = slow_server
  calls_per_request = math.ceil(16 / LIMITS.chunk_words)
  before, start = counts['calls'], time.monotonic()
  with open_stream(address, SETTINGS) as connection:
    read_until(connection, b'event: words')
    first_word_s, calls_then = time.monotonic() - start, counts['calls'] - before
    read_until(connection, b'event: end')
    all_words_s = time.monotonic() - start
  assert calls_then < calls_per_request  # the first words came before the last call ran
  assert first_word_s < all_words_s - (calls_per_request - 2) * CALL_S

  before = counts['calls']
  with open_stream(address, SETTINGS) as connection:
    read_until(connection, b'event: words')
  time.sleep(calls_per_request * CALL_S + 1)  # as long as the rest of the stream would take
  assert counts['calls'] - before < calls_per_request  # its later chunks were never generated


# Records, at each change of the list of samples, how many words it shows and its state.
WATCH = """
window.seen = [];
new MutationObserver(() => window.seen.push([document.querySelectorAll('#stream .word').length,
                                             document.getElementById('stream').dataset.state]))
  .observe(document.getElementById('stream'), {childList: true, subtree: true,
                                               attributes: true});
"""


@pytest.mark.heavy
def test_the_page_streams_words_with_their_shade_and_alternatives_in_chromium(slow_server,
                                                                              browser):
  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  address, _ = slow_server
  browser.get(f'http://{address[0]}:{address[1]}/stream')
  browser.find_element(By.ID, 'seed_text').send_keys('alpha beta <b>bold</b>')
  for name, value in [('num_words', '16'), ('num_samples', '2')]:
    field = browser.find_element(By.ID, name)
    field.clear()
    field.send_keys(value)
  browser.execute_script(WATCH)
  browser.find_element(By.ID, 'submit').click()
  WebDriverWait(browser, 60).until(
      lambda b: b.find_element(By.ID, 'stream').get_attribute('data-state') == 'done')

  words = browser.find_elements(By.CSS_SELECTOR, '#stream .word')
  assert len(words) == 2 * 16
  seen = browser.execute_script('return window.seen')
  assert any(0 < count < 32 and state == 'streaming' for count, state in seen), seen
  assert 'left out: <b>bold</b>' in browser.find_element(By.ID, 'seed').text
  shades = {word.value_of_css_property('background-color') for word in words}
  assert len(shades) > 1  # each word shaded by its own probability
  words[3].click()
  alternatives = browser.find_elements(By.CSS_SELECTOR, '#alternatives .alternative')
  assert len(alternatives) == serving.ALTERNATIVES
  assert all(item.text.endswith('%') for item in alternatives)
