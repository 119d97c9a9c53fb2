"""Tests for rnn_jax.model.ngram: Kneser-Ney against hand counts and a plain-Python reference."""

from collections import Counter
import itertools

import numpy as np
import pytest

from rnn_jax.errors import UserError
from rnn_jax.model import ngram

from conftest import reference_credit

D = 0.75
# Word ids 1..5 (5 never occurs); id 0 pads the contexts.
TINY = [[1, 2, 3], [1, 2, 4], [2, 3]]
TINY_VOCAB = 6


def fit(sequences, order, vocab_size):
  return ngram.KneserNey.fit(*ngram.events(sequences, order), vocab_size)


def probs_of(model, context):
  return np.exp(model.log_probs(np.array([context], np.int32))[0].astype(np.float64))


def random_corpus(rng, vocab_size, num_sequences=12):
  """Sequences over ids 1..vocab_size-2: the last id never occurs."""
  return [list(rng.integers(1, vocab_size - 1, size=rng.integers(1, 15)))
          for _ in range(num_sequences)]


def reference_probs(contexts, labels, vocab_size, context):
  """Interpolated Kneser-Ney straight from the definition, with dicts: float[vocab_size]."""
  order = len(context) + 1
  # counts[k][(ctx, w)], ctx a tuple of k tokens: raw counts at the top, continuation below.
  counts = {order - 1: Counter((tuple(c), l) for c, l in zip(contexts.tolist(), labels.tolist()))}
  for k in range(order - 2, -1, -1):
    counts[k] = Counter((ctx[1:], w) for ctx, w in counts[k + 1])  # the keys are distinct

  def prob(k, ctx, w):
    if k < 0:
      return 1 / (vocab_size - 1)
    lower = prob(k - 1, ctx[1:], w)
    after = {v: c for (c_ctx, v), c in counts[k].items() if c_ctx == ctx}
    if not after:
      return lower
    total = sum(after.values())
    return max(after.get(w, 0) - D, 0) / total + D * len(after) / total * lower

  return np.array([0.0] + [prob(order - 1, tuple(context), w) for w in range(1, vocab_size)])


def test_bigram_matches_hand_computation():
  model = fit(TINY, 2, TINY_VOCAB)
  # Bigrams: (0 1) x2, (1 2) x2, (2 3) x2, (2 4), (0 2): 5 distinct, 8 in all.
  # Continuation counts N1+(. w): 1 <- {0}: 1, 2 <- {1, 0}: 2, 3 <- {2}: 1, 4 <- {2}: 1; sum 5,
  # over 4 distinct words; uniform over the 5 ids 1..5.
  continuation = {1: 1, 2: 2, 3: 1, 4: 1, 5: 0}
  unigram = {w: max(n - D, 0) / 5 + D * 4 / 5 / 5 for w, n in continuation.items()}
  assert unigram == pytest.approx({1: 0.17, 2: 0.37, 3: 0.17, 4: 0.17, 5: 0.12})
  # After 2: c(2 3) = 2, c(2 4) = 1, c(2) = 3, 2 distinct words.
  after_2 = probs_of(model, [2])
  assert after_2[3] == pytest.approx((2 - D) / 3 + D * 2 / 3 * unigram[3])  # 0.501667
  assert after_2[1] == pytest.approx(D * 2 / 3 * unigram[1])
  assert after_2[5] == pytest.approx(D * 2 / 3 * unigram[5])
  # After 0 (start of text): c(0 1) = 2, c(0 2) = 1.
  assert probs_of(model, [0])[2] == pytest.approx((1 - D) / 3 + D * 2 / 3 * unigram[2])
  # 3 is never followed by anything: the unigram alone.
  np.testing.assert_allclose(probs_of(model, [3])[1:], list(unigram.values()), rtol=1e-6)


def test_trigram_matches_hand_computation():
  model = fit(TINY, 3, TINY_VOCAB)
  # Trigrams: (0 0 1) x2, (0 1 2) x2, (1 2 3), (1 2 4), (0 0 2), (0 2 3).
  # Bigram continuation counts from them: (0 1) <- {0}, (0 2) <- {0}, (1 2) <- {0},
  # (2 3) <- {1, 0}: 2, (2 4) <- {1}; the unigram level sees those 5 bigrams, as above.
  unigram = {2: (2 - D) / 5 + D * 4 / 5 / 5, 3: (1 - D) / 5 + D * 4 / 5 / 5}
  # Bigram level after 2: N1+(. 2 3) = 2, N1+(. 2 4) = 1, total 3, 2 distinct words.
  bigram_2_3 = (2 - D) / 3 + D * 2 / 3 * unigram[3]
  # Trigram after (1 2): c(1 2 3) = 1, c(1 2 4) = 1, total 2, 2 distinct words.
  assert probs_of(model, [1, 2])[3] == pytest.approx((1 - D) / 2 + D * 2 / 2 * bigram_2_3)
  # (5 2) was never seen: the bigram level answers alone.
  assert probs_of(model, [5, 2])[3] == pytest.approx(bigram_2_3)
  # After (0 0): c(0 0 1) = 2, c(0 0 2) = 1; the bigram level after 0: N1+(. 0 1) = 1,
  # N1+(. 0 2) = 1, total 2, 2 distinct words.
  bigram_0_2 = (1 - D) / 2 + D * 2 / 2 * unigram[2]
  assert probs_of(model, [0, 0])[2] == pytest.approx((1 - D) / 3 + D * 2 / 3 * bigram_0_2)


@pytest.mark.parametrize('order', [1, 2, 3, 4])
def test_log_probs_match_the_reference(order):
  vocab_size = 7
  sequences = random_corpus(np.random.default_rng(order), vocab_size)
  contexts, labels = ngram.events(sequences, order)
  model = ngram.KneserNey.fit(contexts, labels, vocab_size)
  # Every possible context: seen, unseen and padded ones.
  queries = np.array(list(itertools.product(range(vocab_size), repeat=order - 1)), np.int32)
  queries = queries.reshape(vocab_size ** (order - 1), order - 1)
  with np.errstate(divide='ignore'):  # log 0 = -inf for the padding column
    expected = np.log([reference_probs(contexts, labels, vocab_size, q) for q in queries])
  actual = model.log_probs(queries)
  assert actual.dtype == np.float32 and actual.shape == (len(queries), vocab_size)
  np.testing.assert_allclose(actual, expected, rtol=1e-5)


def test_probabilities_sum_to_one():
  vocab_size = 12
  rng = np.random.default_rng(0)
  contexts, labels = ngram.events(random_corpus(rng, vocab_size, 30), 3)
  model = ngram.KneserNey.fit(contexts, labels, vocab_size)
  queries = np.concatenate([contexts,  # seen, padded ones among them
                            rng.integers(0, vocab_size, size=(50, 2)),  # mostly unseen
                            [[0, 0], [0, vocab_size - 1], [vocab_size - 1, 0]]])
  log_probs = model.log_probs(queries)
  assert np.all(log_probs[:, 0] == -np.inf)
  assert np.all(np.isfinite(log_probs[:, 1:]))
  np.testing.assert_allclose(np.exp(log_probs[:, 1:].astype(np.float64)).sum(axis=1), 1,
                             rtol=1e-5)


def test_score_matches_log_probs():
  vocab_size = 9
  rng = np.random.default_rng(1)
  model = ngram.KneserNey.fit(*ngram.events(random_corpus(rng, vocab_size, 20), 3), vocab_size)
  contexts, labels = ngram.events(random_corpus(rng, vocab_size, 5), 3)
  log_probs = model.log_probs(contexts)
  expected = {'loss': -log_probs[np.arange(len(labels)), labels].astype(np.float64).mean(),
              'accuracy': np.mean(reference_credit(log_probs, labels, 1)),
              'num_windows': len(labels)}
  scores = model.score(contexts, labels)
  assert scores == pytest.approx(expected, rel=1e-6)
  assert 0 < scores['accuracy'] < 1
  assert model.score(contexts, labels, batch_size=3) == scores
  assert all(type(scores[k]) is t for k, t in [('loss', float), ('accuracy', float),
                                               ('num_windows', int)])


def test_a_tie_shares_its_credit_and_padding_is_never_tied():
  # Unigrams: 1 and 2 seen once each, 3 only through the uniform share.
  unigram = fit([[1, 2]], 1, 4)
  no_context = np.zeros((3, 0), np.int32)
  assert unigram.score(no_context[:2], np.array([1, 2]))['accuracy'] == 0.5
  assert unigram.score(no_context[:1], np.array([3]))['accuracy'] == 0
  # Every word seen as often: a flat guess over ids 1..3, id 0 (padding) having no probability.
  flat = fit([[1, 2, 3]], 1, 4)
  assert flat.score(no_context, np.array([1, 2, 3]))['accuracy'] == pytest.approx(1 / 3)
  assert flat.score(no_context[:1], np.array([2]))['accuracy'] == pytest.approx(1 / 3)


def test_trigrams_learn_a_pattern_bigrams_cannot():
  # After 2 comes 3 or 4 equally often; the word before the 2 decides which.
  sequences = [[1, 2, 3, 5, 2, 4] * 10] * 3
  trigram = fit(sequences, 3, 6)
  assert trigram.score(*ngram.events(sequences, 3))['accuracy'] == 1.0
  bigram = fit(sequences, 2, 6)
  assert bigram.score(*ngram.events(sequences, 2))['accuracy'] < 1.0


def test_events_left_pad_every_position():
  contexts, labels = ngram.events([[5, 6, 7], [], [8]], 3)
  np.testing.assert_array_equal(contexts, [[0, 0], [0, 5], [5, 6], [0, 0]])
  np.testing.assert_array_equal(labels, [5, 6, 7, 8])
  assert contexts.dtype == labels.dtype == np.int32
  contexts, labels = ngram.events([np.array([5, 6, 7])], 1)
  assert contexts.shape == (3, 0)
  np.testing.assert_array_equal(labels, [5, 6, 7])
  assert ngram.events([[]], 2)[0].shape == (0, 1)


@pytest.mark.parametrize('bad', [
    dict(contexts=np.zeros(3, np.int32)),  # no context axis
    dict(contexts=[[1], [2], [6]]),  # context id >= vocab_size
    dict(contexts=[[1], [-1], [2]]),  # negative context id
    dict(labels=[1, 0, 2]),  # padding as a word
    dict(labels=[1, 2, 6]),  # label id >= vocab_size
    dict(labels=[1, 2]),  # one label short
    dict(contexts=np.zeros((0, 1), np.int32), labels=np.zeros(0, np.int32)),  # no events
    dict(contexts=[[1.5], [2], [3]]),  # not ids
    dict(discount=0.0),
    dict(discount=1.0),
    dict(vocab_size=1),
])
def test_fit_rejects_bad_input(bad):
  args = dict(contexts=[[1], [2], [3]], labels=[2, 3, 1], vocab_size=6) | bad
  with pytest.raises(UserError):
    ngram.KneserNey.fit(**args)


def test_other_bad_input_is_rejected():
  with pytest.raises(UserError, match='order'):
    ngram.events([[1, 2]], 0)
  model = fit(TINY, 2, TINY_VOCAB)
  for contexts in ([[1, 2]], [[6]], [[-1]]):  # wrong width, ids outside [0, vocab_size)
    with pytest.raises(UserError):
      model.log_probs(np.array(contexts))
  for labels in ([0], [6], [1, 2]):
    with pytest.raises(UserError):
      model.score(np.array([[1]]), np.array(labels))
  with pytest.raises(UserError):
    model.score(np.array([[1]]), np.array([2]), batch_size=0)
