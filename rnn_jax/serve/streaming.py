"""Generation that streams: each call's words as soon as it returns, with the model's probability
of each and its likeliest alternatives there, as server-sent events.

Server-sent events rather than a websocket or a bare chunked body: the stream only flows from the
server, it is plain HTTP that proxies and the micro-batcher's deadline already handle, the
browser's EventSource reads it with no library, and each event is one JSON line, so a client
never has to find where a chunk of words ends. Events:

  start   {"seed", "unknown_words", and the settings with their rng_seed}: before any call
  words   {"samples": [[word, ...] per sample]}: each call's new words, word =
          {"text": what to append (its space included), "word", "probability",
           "alternatives": [{"word", "probability"}, ...] the ALTERNATIVES likeliest}
  end     {}: the last words were sent

The words are those `POST /api/generate` writes for the same settings and rng_seed. A client
that goes away ends the stream: no later chunk is generated, and the one it waited for is
dropped from its call.
"""

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from rnn_jax.serve import serving


def events(service: serving.Service, seed_text: Any,
           settings: serving.Settings) -> AsyncIterator[bytes]:
  """The request's events; a bad seed text raises UserError before the first is made, so that
  it is answered 400 rather than with a broken stream."""
  seed = service.seed(seed_text)
  settings = serving.with_rng_seed(settings)
  rng = np.random.default_rng(settings.rng_seed)
  return _stream(service, seed, settings, rng)


async def _stream(service, seed, settings, rng) -> AsyncIterator[bytes]:
  yield event('start', {'seed': service.show(seed.tokens), 'unknown_words': seed.unknown,
                        **vars(settings)})
  # Each sample's last token: how a word is glued on depends on the one before it alone.
  last = [list(seed.tokens[-1:]) for _ in range(settings.num_samples)]
  async for tokens, log_probs, alternatives, alternative_log_probs in service.chunks(
      seed.tokens, settings, rng):
    samples = []
    for row, before in enumerate(last):
      words = []
      for step, token in enumerate(tokens[row]):
        words.append(_word(service, before, int(token), log_probs[row, step],
                           alternatives[row, step], alternative_log_probs[row, step]))
        before = [int(token)]
      last[row] = before
      samples.append(words)
    yield event('words', {'samples': samples})
  yield event('end', {})


def _word(service: serving.Service, before: list[int], token: int, log_prob: float,
          alternatives: Sequence[int], alternative_log_probs: Sequence[float]) -> dict:
  """One generated word for the page, after `before` (the sample's last token, if any)."""
  # The display glues punctuation to the word before it: what to append is the difference.
  text = service.show(before + [token])[len(service.show(before)):]
  return {'text': text, 'word': service.show([token]), 'probability': _probability(log_prob),
          'alternatives': [{'word': service.show([int(a)]), 'probability': _probability(p)}
                           for a, p in zip(alternatives, alternative_log_probs)]}


def _probability(log_prob: float) -> float:
  return round(float(np.exp(log_prob)), 4)


def event(name: str, data: dict) -> bytes:
  """One server-sent event; the JSON is ASCII on one line, as every JSON answer here is."""
  line = json.dumps(data, allow_nan=False, separators=(',', ':'))
  return f'event: {name}\ndata: {line}\n\n'.encode('ascii')
