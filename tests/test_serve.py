"""The server: micro-batching, request checks, and every page and endpoint through a test client."""

import asyncio
import concurrent.futures
import json
import re

import jax
import numpy as np
import pytest
from starlette.testclient import TestClient

from conftest import CYCLE
from conftest import read_config
from rnn_jax.corpus import seeds
from rnn_jax.errors import UserError
from rnn_jax.generation import sampling
from rnn_jax.serve import batching
from rnn_jax.serve import serving
from rnn_jax.serve import web

LIMITS = serving.Limits(batch_sizes=(1, 4), max_words=16, chunk_words=8, max_samples=4,
                        max_seed_chars=200, top_k_choices=(0, 3), top_p_choices=(1.0, 0.9))
HUGE = 10**309  # past float's range: float(HUGE) overflows


@pytest.fixture(scope='module')
def service(trained):
  workdir, _ = trained
  served = serving.Service(workdir, limits=LIMITS, wait_s=0.02)
  assert served.warm_up() == 2
  return served


@pytest.fixture(scope='module')
def client(service):
  with TestClient(web.app(service)) as test_client:
    yield test_client


@pytest.fixture(scope='module')
def stateful_service(trained):
  workdir, _ = trained
  return serving.Service(workdir, mode='stateful', limits=LIMITS, wait_s=0.02)


@pytest.fixture(scope='module')
def stateful(stateful_service):
  with TestClient(web.app(stateful_service)) as test_client:
    yield test_client


@pytest.fixture
def compilations():
  """The XLA compilations while a test runs."""
  events = []

  def listen(event, *unused_args, **unused_kwargs):
    if event == '/jax/core/compile/backend_compile_duration':
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield events
  jax.monitoring.unregister_event_duration_listener(listen)


def batch(run, submissions, **options):
  """Submits (group, item, rows) all at once; returns their results."""
  async def submit_all():
    async with batching.MicroBatcher(run, **options) as batcher:
      return await asyncio.gather(*(batcher.submit(*s) for s in submissions),
                                  return_exceptions=True)
  return asyncio.run(submit_all())


def recording(calls):
  def run(group, items):
    calls.append((group, list(items)))
    if group == 'bad':
      raise ValueError('this group fails')
    return [f'{group}{item}' for item in items]
  return run


def test_concurrent_requests_share_calls_by_group_within_max_rows():
  calls = []
  results = batch(recording(calls), [('a', 1, 2), ('b', 2, 1), ('a', 3, 2), ('a', 4, 1)],
                  max_rows=4, wait_s=0.05)
  assert results == ['a1', 'b2', 'a3', 'a4']
  # The first three fill max_rows: the fourth waits for the next round of calls.
  assert calls == [('a', [1, 3]), ('b', [2]), ('a', [4])]


def test_without_micro_batching_every_request_is_a_call_of_its_own():
  calls = []
  results = batch(recording(calls), [('a', 1, 1), ('a', 2, 1)], max_rows=4, wait_s=0,
                  gather=False)
  assert results == ['a1', 'a2'] and calls == [('a', [1]), ('a', [2])]


def test_a_failing_call_fails_its_own_requests_only():
  calls = []
  results = batch(recording(calls), [('bad', 1, 1), ('a', 2, 1), ('bad', 3, 1)], max_rows=4,
                  wait_s=0)
  assert [str(r) for r in results] == ['this group fails', 'a2', 'this group fails']


def test_settings_take_form_strings_and_json_values_and_defaults():
  assert serving.Settings.parse({}, LIMITS) == serving.Settings(num_words=16)
  parsed = serving.Settings.parse({'num_words': '5', 'temperature': '0.5', 'top_k': '3',
                                   'top_p': '', 'num_samples': 2, 'rng_seed': None}, LIMITS)
  assert parsed == serving.Settings(5, 0.5, 3, 1.0, 2, None)


@pytest.mark.parametrize('fields, message', [
    ({'num_words': 0}, 'num_words must be from 1 to 16, got 0'),
    ({'num_words': 17}, 'num_words must be from 1 to 16, got 17'),
    ({'num_words': 2.5}, 'num_words must be an integer, got 2.5'),
    ({'num_words': True}, 'num_words must be an integer, got True'),
    ({'num_words': 'ten'}, "num_words must be an integer, got 'ten'"),
    ({'num_samples': 5}, 'num_samples must be from 1 to 4, got 5'),
    ({'temperature': -0.1}, 'temperature must be from 0 to 2.0, got -0.1'),
    ({'temperature': 'nan'}, 'temperature must be from 0 to 2.0, got nan'),
    ({'temperature': [1]}, 'temperature must be a number, got an array'),
    ({'temperature': {'a': 1}}, 'temperature must be a number, got an object'),
    ({'top_k': 7}, 'top_k must be one of 0, 3, got 7'),
    ({'top_p': 0.5}, 'top_p must be one of 1.0, 0.9, got 0.5'),
    ({'rng_seed': -1}, 'rng_seed must be from 0 to 4294967295, got -1'),
    # Integers whole and floats with the digits that put them out of range.
    ({'rng_seed': 2**32}, 'rng_seed must be from 0 to 4294967295, got 4294967296'),
    ({'temperature': 2.0000001}, 'temperature must be from 0 to 2.0, got 2.0000001'),
    # Past float's range, as a number and as a form's string; a long value is cut.
    ({'num_words': HUGE}, f'num_words must be from 1 to 16, got {str(HUGE)[:60]}... (310 '
                          f'characters)'),
    ({'num_words': str(HUGE)}, 'num_words must be from 1 to 16, got 1000'),
    ({'temperature': HUGE}, 'temperature must be from 0 to 2.0, got 1000'),
    ({'top_k': HUGE}, 'top_k must be one of 0, 3, got 1000'),
    ({'top_p': -HUGE}, 'top_p must be one of 1.0, 0.9, got -1000'),
    ({'rng_seed': str(HUGE)}, 'rng_seed must be from 0 to 4294967295, got 1000'),
    ({'num_words': '9' * 5000}, "num_words must be an integer, got '9999"),  # int()'s limit
])
def test_settings_out_of_bounds_are_named(fields, message):
  with pytest.raises(UserError, match=re.escape(message)) as refused:
    serving.Settings.parse(fields, LIMITS)
  assert len(str(refused.value)) < 150


def test_health_names_the_model_vocabulary_and_checkpoint(client, trained):
  workdir, _ = trained
  health = client.get('/api/health').json()
  assert health['status'] == 'ok' and health['model'] == 'WordRNN'
  assert health['cell'] == health['model_config']['cell'] == read_config(workdir)['cell']
  assert health['vocab_size'] == len(CYCLE) + 2  # padding, the unknown word and the cycle's
  assert health['checkpoint'] == 'best'
  assert str(health['checkpoint_step']) in {p.name for p in (workdir / 'checkpoints').iterdir()}
  assert health['limits']['max_words'] == 16 and health['limits']['batch_sizes'] == [1, 4]


def test_generate_continues_the_seed_and_names_unknown_words(client):
  answer = client.post('/api/generate', json={
      'seed_text': 'alpha beta UNKNOWN gamma delta', 'num_words': 6, 'temperature': 0.01,
      'num_samples': 2, 'rng_seed': 1}).json()
  assert answer['seed'] == 'alpha beta gamma delta' and answer['unknown_words'] == ['UNKNOWN']
  assert [s['generated'].split() for s in answer['samples']] == [(CYCLE * 2)[4:10]] * 2
  assert all(s['mean_logprob'] < 0 for s in answer['samples'])
  assert (answer['num_words'], answer['num_samples'], answer['rng_seed']) == (6, 2, 1)


def test_random_passages_come_with_their_real_continuation(client):
  answer = client.get('/api/random', params={'num_words': 5, 'temperature': 0,
                                             'top_k': 3}).json()
  assert len(answer['seed'].split()) == 4
  assert answer['samples'][0]['generated'] == answer['actual']  # a good model of the cycle
  assert len(answer['actual'].split()) == 5 and answer['top_k'] == 3


def test_a_request_writes_the_same_text_alone_or_batched_with_others(client):
  requests = [{'seed_text': 'delta epsilon', 'num_words': n, 'num_samples': s, 'rng_seed': n,
               'temperature': 1.5} for n, s in [(3, 1), (9, 2), (16, 1), (5, 4)]]
  alone = [client.post('/api/generate', json=r).json() for r in requests]
  with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
    together = list(pool.map(lambda r: client.post('/api/generate', json=r).json(), requests))
  assert together == alone
  assert [len(a['samples'][-1]['generated'].split()) for a in alone] == [3, 9, 16, 5]


def test_a_shorter_request_writes_the_start_of_a_longer_one(client):
  request = {'seed_text': 'delta', 'temperature': 1.5, 'num_samples': 2, 'rng_seed': 3}
  short, long = (client.post('/api/generate', json=request | {'num_words': n}).json()
                 for n in (5, 16))
  assert [s['generated'].split() for s in short['samples']] == [
      s['generated'].split()[:5] for s in long['samples']]


def test_the_second_call_continues_where_the_first_stopped(client):
  answer = client.post('/api/generate', json={'seed_text': 'alpha beta gamma delta',
                                              'num_words': 16, 'temperature': 0}).json()
  assert answer['samples'][0]['generated'].split() == (CYCLE * 3)[4:20]


def test_stateful_calls_of_a_chunk_write_what_one_call_would(stateful_service, stateful):
  """Greedy, so that keys do not matter: the second call of 8 words reads the seed and the
  first call's words, padded to one length, and the 16 words are those of one call."""
  seed = 'alpha beta gamma delta'
  answer = stateful.post('/api/generate', json={'seed_text': seed, 'num_words': 16,
                                                'temperature': 0}).json()
  service = stateful_service
  one_call = sampling.continue_seeds(
      service.model, service.params, [seeds.from_text(seed, service.tokenizer)],
      service.training_length, jax.random.key(0), 16, 0.0,
      sampling.Decoding('stateful', unknown_id=service.tokenizer.unknown_id))
  shown = seeds.show(service.tokenizer, np.asarray(one_call.tokens[0]))
  assert answer['samples'][0]['generated'] == shown


def test_nothing_compiles_while_serving_the_default_decoding(client, compilations):
  requests = [{'seed_text': 'zeta', 'num_words': n, 'num_samples': s, 'temperature': t}
              for n, s, t in [(1, 1, 0), (8, 3, 0.3), (9, 4, 2), (16, 2, 1)]]
  with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
    answers = list(pool.map(lambda r: client.post('/api/generate', json=r), requests))
  answers += [client.get('/api/random'), client.get('/game')]
  assert [a.status_code for a in answers] == [200] * 6
  assert not compilations


def bad_inputs():
  good = {'seed_text': 'alpha beta'}
  cases = [
      ({}, 'seed_text must be some text to continue'),
      ({'seed_text': '   '}, 'seed_text must be some text to continue'),
      ({'seed_text': 7}, 'seed_text must be some text to continue'),
      ({'seed_text': 'alpha ' * 40}, 'seed_text must be at most 200 characters, got 240'),
      ({'seed_text': 'nothing known'}, "the seed text 'nothing known' leaves no word"),
      (good | {'num_words': 17}, 'num_words must be from 1 to 16'),
      (good | {'num_samples': 9}, 'num_samples must be from 1 to 4'),
      (good | {'temperature': 3}, 'temperature must be from 0 to 2.0, got 3'),
      (good | {'top_p': 0.3}, 'top_p must be one of 1.0, 0.9'),
      (good | {'beam_width': 2}, "unknown field: 'beam_width'"),
      (good | {'num_words': HUGE}, 'num_words must be from 1 to 16, got 1000'),
      (good | {'num_words': str(HUGE)}, 'num_words must be from 1 to 16, got 1000'),
      (good | {'top_k': HUGE}, 'top_k must be one of 0, 3, got 1000'),
      (good | {'rng_seed': HUGE}, 'rng_seed must be from 0 to 4294967295, got 1000'),
      (good | {'temperature': 2.0000001}, 'temperature must be from 0 to 2.0, got 2.0000001'),
      # Half of a surrogate pair, which JSON can spell and UTF-8 cannot encode.
      ({'seed_text': 'A neural \ud800 network'}, 'seed_text must be Unicode text: character 9 '
                                                 "is half of a surrogate pair ('\\ud800')"),
      (good | {'\udfff\n': 1}, "unknown field: '\\udfff\\n'"),
  ]
  yield from ((json.dumps(fields), message) for fields, message in cases)
  yield '{"seed_text": "alpha"', 'the body must be a JSON object: Expecting'
  yield '["alpha"]', 'the body must be a JSON object, got list'
  yield '\xff', 'the body must be a JSON object'
  yield ('{"seed_text": "alpha", "num_words": ' + '7' * 5000 + '}',
         'the body holds an integer of 5,000 digits, more than any field takes')
  # Nested deeper than json's recursion allows, and as deep as it allows, inside 16 KiB.
  yield '[' * 5000 + ']' * 5000, 'the body must be a JSON object: it nests too deeply'
  yield ('{"seed_text": "alpha", "temperature": ' + '[' * 500 + ']' * 500 + '}',
         'temperature must be a number, got an array')


@pytest.mark.parametrize('body, message', list(bad_inputs()))
def test_bad_requests_are_answered_400_with_a_message_and_serving_goes_on(client, body, message):
  answer = client.post('/api/generate', content=body)
  assert answer.status_code == 400
  error = answer.json()['error']
  assert error.startswith(message) and '\n' not in error and len(error) < 200
  assert client.post('/api/generate', json={'seed_text': 'alpha'}).status_code == 200


@pytest.mark.parametrize('method, path, status, message', [
    ('post', '/api/random?num_words=0', 405, 'Method Not Allowed'),
    ('get', '/api/random?num_words=0', 400, 'num_words must be from 1 to 16, got 0'),
    ('get', '/api/random?top_k=1', 400, 'top_k must be one of 0, 3, got 1'),
    ('get', f'/api/random?rng_seed={HUGE}', 400, 'rng_seed must be from 0 to 4294967295, got'),
    ('get', f'/api/random?top_p={HUGE}', 400, 'top_p must be one of 1.0, 0.9, got inf'),
    ('get', '/api/random?seed_text=a&bogus=1', 400, "unknown fields: 'bogus', 'seed_text'"),
    ('get', '/api/nothing', 404, 'Not Found'),
    ('get', '/api/generate', 405, 'Method Not Allowed')])
def test_other_bad_api_requests_are_answered_as_json(client, method, path, status, message):
  answer = getattr(client, method)(path)
  assert answer.status_code == status and answer.json()['error'].startswith(message)


def test_an_oversized_body_is_refused(client):
  answer = client.post('/api/generate', content='{"seed_text": "' + 'a' * 20_000 + '"}')
  assert answer.status_code == 413
  assert client.get('/api/health').status_code == 200


def test_the_generate_page_shows_continuations_and_unknown_words(client):
  page = client.get('/')
  assert page.status_code == 200 and 'id="generate"' in page.text and 'results' not in page.text
  page = client.get('/', params={'seed_text': 'alpha beta MISSING gamma delta', 'num_words': 4,
                                 'temperature': 0, 'num_samples': 2})
  assert page.status_code == 200
  assert page.text.count('<span class="generated">epsilon zeta eta theta</span>') == 2
  assert 'Not in the vocabulary, left out: MISSING' in page.text
  assert '>alpha beta MISSING gamma delta</textarea>' in page.text  # the form keeps the text
  assert "script-src" not in page.headers['content-security-policy']  # no script at all


def test_window_mode_equals_stateful_mode_for_a_seed_shorter_than_the_window(client, stateful):
  """The page and the API in window mode (the default) against a stateful server: the window
  of 4 holds a 1-word seed and its first 3 words, so the first 4 words drawn agree, and so do
  their log-probabilities (the tiny model is sure of its words: reading the padding changes
  those, not the words)."""
  request = {'seed_text': 'gamma', 'num_words': 4, 'temperature': 2.0, 'num_samples': 4,
             'rng_seed': 7}
  answers = [c.post('/api/generate', json=request).json() for c in (client, stateful)]
  pages = [c.get('/', params=request).text for c in (client, stateful)]
  assert answers[0]['samples'] == answers[1]['samples']
  generated = [re.findall(r'<span class="generated">([^<]*)</span>', page) for page in pages]
  assert generated[0] == generated[1] == [s['generated'] for s in answers[0]['samples']]


def test_the_generate_page_names_bad_input_and_keeps_the_form(client):
  page = client.get('/', params={'seed_text': 'alpha', 'num_words': 99})
  assert page.status_code == 400
  assert 'num_words must be from 1 to 16, got 99' in page.text and 'id="generate"' in page.text


def test_user_text_is_escaped_in_pages(client):
  attack = '<script>alert("x")</script> alpha <img src=x onerror=alert(1)>'
  for page in (client.get('/', params={'seed_text': attack}),
               client.get('/', params={'seed_text': attack, 'num_words': attack}),
               client.get('/random', params={'temperature': attack})):
    assert '<script' not in page.text and '<img' not in page.text
    assert '&lt;script&gt;' in page.text or '&lt;img' in page.text


def test_the_random_page_shows_the_real_continuation(client):
  page = client.get('/random', params={'num_words': 6, 'num_samples': 2})
  assert page.status_code == 200
  assert page.text.count('class="generated"') == 2 and 'id="actual"' in page.text


def test_a_game_round_is_scored_and_the_authors_revealed(client):
  page = client.get('/game', params={'score': 2, 'played': 3})
  assert 'Score: 2 of 3' in page.text and page.text.count('name="choice"') == 3
  round_id = re.search(r'name="round" value="([^"]+)"', page.text).group(1)
  answers = [client.post('/game', data={'round': round_id, 'score': 2, 'played': 3,
                                        'choice': choice}) for choice in ('4', '1', '1')]
  assert [a.status_code for a in answers] == [400, 200, 404]  # a round is answered once
  verdict = answers[1].text
  human = verdict.count('class="human"') == 1 and verdict.count('machine (diversity') == 2
  assert human and ('Score: 3 of 4' in verdict) == ('Correct!' in verdict)
  assert 'Score: 2 of 4' in verdict or 'Score: 3 of 4' in verdict
  assert client.get('/game', params={'score': 5, 'played': 3}).status_code == 400
