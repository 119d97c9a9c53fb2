"""Tests for rnn_jax.generation.sampling: generation against step-by-step references, draws
against softmax.

Compiling dominates the run time: the models are built once, every generate call that can share
a compiled program does (same model, seed shape, num_words and Decoding; temperature and params
are traced), and the reference loops run one jitted apply per input shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.configs import ModelConfig
from rnn_jax.errors import UserError
from rnn_jax.generation import sampling
from rnn_jax.model import cells
from rnn_jax.model.word_rnn import WordRNN

from conftest import CYCLE

VOCAB = 40
NUM_WORDS = 6
# Row 1 is left-padded; both modes skip its padding.
SEEDS = np.array([[3, 17, 5, 29, 11], [0, 0, 8, 21, 2], [39, 1, 14, 6, 33]], np.int32)
# Three lengths for stateful decoding: 5, 3 and 2 words.
RAGGED_SEEDS = np.array([[3, 17, 5, 29, 11], [0, 0, 8, 21, 2], [0, 0, 0, 14, 6]], np.int32)
WINDOW = sampling.Decoding()
STATEFUL = sampling.Decoding(mode='stateful')


def small_model(**overrides) -> WordRNN:
  config = ModelConfig(embedding_dim=8, rnn_units=8, dense_units=16, **overrides)
  return WordRNN(config, VOCAB)


SMALL = small_model()
CELL_NAMES = sorted(cells.CELLS)


@functools.partial(jax.jit, static_argnames='model')
def model_logits(model, params, tokens):
  return model.apply({'params': params}, tokens, deterministic=True)


def word_log_probs(logits):
  """log_softmax over the words, id 0 (padding) excluded, in float64."""
  logits = np.asarray(logits, np.float64).copy()
  logits[..., 0] = -np.inf
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def softmax(scores):
  scores = np.asarray(scores, np.float64)
  weights = np.exp(scores - scores.max())
  return weights / weights.sum()


def window_reference(model, params, seeds, num_words, tokens=None):
  """A loop that re-reads the last window every step, without its left padding.

  Returns (ids, log_probs, every_word): the greedy id at each step (id 0 excluded), the
  model's log-probability of the token fed back in: the greedy one, or given `tokens`,
  tokens[:, t] (teacher forcing), and [batch, num_words, vocab] those of every word.
  """
  window, ids, log_probs, every_word = np.asarray(seeds), [], [], []
  for t in range(num_words):
    unpadded = [np.trim_zeros(row, 'f')[None] for row in window]
    step = word_log_probs(np.concatenate([model_logits(model, params, row) for row in unpadded]))
    ids.append(np.argmax(step, -1))
    token = ids[-1] if tokens is None else np.asarray(tokens)[:, t]
    log_probs.append(step[np.arange(len(token)), token])
    every_word.append(step)
    window = np.concatenate([window[:, 1:], token[:, None]], axis=1).astype(np.int32)
  return np.stack(ids, 1), np.stack(log_probs, 1), np.stack(every_word, 1)


def history_reference(model, params, seeds, num_words):
  """Greedy ids of a loop that feeds each sequence's whole unpadded history every step."""
  rows = []
  for seed in np.asarray(seeds):
    history = list(np.trim_zeros(seed, 'f'))
    for _ in range(num_words):
      logits = model_logits(model, params, np.array([history], np.int32))
      history.append(int(np.argmax(word_log_probs(logits)[0])))
    rows.append(history[-num_words:])
  return np.array(rows)


@pytest.fixture(scope='module')
def small_params():
  return SMALL.init(jax.random.key(0), SEEDS, deterministic=True)['params']


@pytest.fixture(scope='module')
def sharp_params(small_params):
  """The small model with its output kernel scaled up: large gaps between the logits."""
  logits = small_params['logits']
  return {**small_params, 'logits': {**logits, 'kernel': 30 * logits['kernel']}}


def test_window_greedy_equals_step_by_step_loop(small_params):
  generated = sampling.generate(SMALL, small_params, SEEDS, jax.random.key(0), NUM_WORDS, 0.0)
  ids, log_probs, _ = window_reference(SMALL, small_params, SEEDS, NUM_WORDS)
  np.testing.assert_array_equal(generated.tokens, ids)
  np.testing.assert_allclose(generated.log_probs, log_probs, atol=1e-5)
  assert generated.tokens.dtype == jnp.int32


@pytest.mark.parametrize('cell', CELL_NAMES)
def test_stateful_greedy_equals_feeding_the_whole_history(cell):
  model = small_model(cell=cell, rnn_layers=2)
  params = model.init(jax.random.key(1), SEEDS, deterministic=True)['params']
  generated = sampling.generate(model, params, RAGGED_SEEDS, jax.random.key(0), NUM_WORDS, 0.0,
                                STATEFUL)
  np.testing.assert_array_equal(generated.tokens,
                                history_reference(model, params, RAGGED_SEEDS, NUM_WORDS))


@pytest.mark.parametrize('cell', CELL_NAMES)
@pytest.mark.parametrize('fields', [{}, {'top_k': 5, 'top_p': 0.8}, {'beam_width': 3}])
def test_window_and_stateful_modes_agree_while_the_seed_fits_the_window(cell, fields):
  """Short seeds, left-padded to the window: the same tokens under the same keys, drawn at
  temperature 1, until the context outgrows the window."""
  model = small_model(cell=cell)
  params = model.init(jax.random.key(2), SEEDS, deterministic=True)['params']
  seeds = np.pad(RAGGED_SEEDS[:, 2:], ((0, 0), (5, 0)))  # windows of 8; seeds of 3, 3 and 2
  run = lambda mode, **more: sampling.generate(
      model, params, seeds, jax.random.key(3), 5, 1.0, sampling.Decoding(mode, **fields, **more))
  window, stateful = run('window'), run('stateful')
  np.testing.assert_array_equal(window.tokens, stateful.tokens)
  np.testing.assert_allclose(window.log_probs, stateful.log_probs, atol=1e-5)


def beam_of_one(model, params, seeds, mode):
  """sampling's beam search with a beam of one (Decoding(beam_width=1) samples instead)."""
  logits = params['logits']
  params = {**params, 'logits': {**logits, 'bias': logits['bias'].at[0].set(-jnp.inf)}}
  reader = sampling._READERS[mode](model, params)
  search = functools.partial(sampling._beam_search, reader, num_words=NUM_WORDS, width=1)
  return jax.jit(jax.vmap(search))(jnp.asarray(seeds))


@pytest.mark.parametrize('mode', sampling.MODES)
def test_limits_of_the_draw_are_greedy(sharp_params, mode):
  key = jax.random.key(4)
  run = lambda temperature, **fields: sampling.generate(
      SMALL, sharp_params, SEEDS, key, NUM_WORDS, temperature,
      sampling.Decoding(mode=mode, **fields)).tokens
  greedy = run(0.0)
  np.testing.assert_array_equal(run(1.0, top_k=1), greedy)
  np.testing.assert_array_equal(run(1.0, top_p=1e-6), greedy)
  np.testing.assert_array_equal(run(1e-5), greedy)
  np.testing.assert_array_equal(beam_of_one(SMALL, sharp_params, SEEDS, mode).tokens, greedy)
  assert not np.array_equal(run(1.0), greedy)  # the limits matter: plain sampling differs


# A bigram model built by hand: the next word depends on the last token only.
A, B, C, D = 1, 2, 3, 4
OTHERS = [5, 6, 7, 8]
BIGRAM_VOCAB = 9
BIGRAM = WordRNN(ModelConfig(embedding_dim=BIGRAM_VOCAB, rnn_units=BIGRAM_VOCAB,
                              dense_units=BIGRAM_VOCAB), BIGRAM_VOCAB)
IMPOSSIBLE = -30.0  # the log-probability of a transition the table rules out


def bigram_table() -> np.ndarray:
  """P(next | last): greedy takes a then b (0.6), but b leads to four words of 0.25 each, while
  c (0.4) leads to d (0.95): a, c, d is likelier than a, b, anything."""
  table = np.zeros((BIGRAM_VOCAB, BIGRAM_VOCAB))
  table[:, 1:] = 1 / 8  # padding, d and the others: any word
  table[A] = 0
  table[A, [B, C]] = 0.6, 0.4
  table[B] = 0
  table[B, OTHERS] = 0.25
  table[C] = 0
  table[C, D] = 0.95
  table[C, OTHERS] = 0.05 / len(OTHERS)
  return table


def bigram_params(table: np.ndarray):
  """One-hot all the way: the LSTM forgets everything but the token it just read."""
  assert BIGRAM.config.cell == 'lstm'  # the parameters below are an LSTM's
  v = len(table)
  eye = np.eye(v, dtype=np.float32)
  kernel = np.zeros((v, 4 * v), np.float32)
  kernel[:, 2 * v:3 * v] = 10 * eye  # Keras gate order i, f, c (g), o
  bias = np.zeros(4 * v, np.float32)
  bias[:v], bias[v:2 * v], bias[3 * v:] = 20, -20, 20  # input open, forget shut, output open
  with np.errstate(divide='ignore'):
    log_table = np.where(table > 0, np.log(table), IMPOSSIBLE).astype(np.float32)
  zeros = lambda *shape: np.zeros(shape, np.float32)
  return jax.tree.map(jnp.asarray, {
      'embed': {'embedding': 10 * eye},
      'lstm_0': {'kernel': kernel, 'recurrent_kernel': zeros(v, 4 * v), 'bias': bias},
      # h = o * tanh(c) = tanh(tanh(10 * 10)) ~ tanh(tanh(10)) for the token read, ~0 elsewhere.
      'dense': {'kernel': eye / np.tanh(np.tanh(10.0)), 'bias': zeros(v)},
      'logits': {'kernel': log_table, 'bias': zeros(v)},
  })


@pytest.fixture(scope='module')
def bigram():
  table = bigram_table()
  np.testing.assert_allclose(table[1:].sum(1), 1.0)
  params = bigram_params(table)
  shapes = jax.eval_shape(lambda: BIGRAM.init(jax.random.key(0), SEEDS, deterministic=True))
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape,
                                                                  shapes['params'])
  # Sanity: after any word, the model's softmax is the table's row of the last word.
  last = np.arange(1, BIGRAM_VOCAB)
  windows = np.stack([np.roll(last, 3), last], 1).astype(np.int32)
  probs = jax.nn.softmax(model_logits(BIGRAM, params, windows))
  np.testing.assert_allclose(probs, table[last], atol=1e-6)
  return params


@pytest.mark.parametrize('mode', sampling.MODES)
def test_beam_search_finds_the_likelier_path_greedy_misses(bigram, mode):
  seeds = np.array([[0, 0, A]], np.int32)
  run = lambda **fields: sampling.generate(BIGRAM, bigram, seeds, jax.random.key(0), 2, 0.0,
                                           sampling.Decoding(mode=mode, **fields))
  greedy, beam = run(), run(beam_width=2)

  assert greedy.tokens[0, 0] == B and greedy.tokens[0, 1] in OTHERS
  np.testing.assert_allclose(greedy.log_probs[0], np.log([0.6, 0.25]), atol=1e-4)
  np.testing.assert_array_equal(beam.tokens, [[C, D]])
  np.testing.assert_allclose(beam.log_probs[0], np.log([0.4, 0.95]), atol=1e-4)
  assert beam.log_probs.sum() > greedy.log_probs.sum() + 0.9


@functools.partial(jax.jit, static_argnames=('top_k', 'top_p'))
def draw_many(logits, temperature, keys, *, top_k=0, top_p=1.0):
  draw = lambda key: sampling.draw(logits, temperature, key, top_k=top_k, top_p=top_p)
  return jax.vmap(draw)(keys)


def nucleus_reference(scores: np.ndarray, top_p: float) -> np.ndarray:
  """bool mask: the shortest sorted prefix whose softmax mass reaches top_p, ties of its last."""
  probs = softmax(scores)
  order = np.argsort(-scores, kind='stable')
  last = min(np.searchsorted(np.cumsum(probs[order]), top_p), len(scores) - 1)
  return np.isfinite(scores) & (scores >= scores[order[last]])


def expected_probs(logits, temperature, top_k=0, top_p=1.0):
  scaled = np.asarray(logits, np.float64) / temperature
  if top_k:
    scaled = np.where(scaled >= np.sort(scaled)[-top_k], scaled, -np.inf)
  if top_p < 1:
    scaled = np.where(nucleus_reference(scaled, top_p), scaled, -np.inf)
  return softmax(scaled)


DRAWS = 40_000
# 300 words: the draw's blocks of 32 leave a short last block of 12.
DRAW_LOGITS = np.concatenate(
    [[-np.inf], 1.5 * np.random.default_rng(5).standard_normal(299)]).astype(np.float32)


@pytest.fixture(scope='module')
def draw_keys():
  return jax.random.split(jax.random.key(11), DRAWS)


@pytest.mark.parametrize('temperature', [0.7, 1.5])
@pytest.mark.parametrize('truncation', [{}, {'top_k': 20}, {'top_p': 0.5}])
def test_draw_frequencies_match_softmax(draw_keys, temperature, truncation):
  tokens = np.asarray(draw_many(DRAW_LOGITS, temperature, draw_keys, **truncation))
  counts = np.bincount(tokens, minlength=len(DRAW_LOGITS))
  probs = expected_probs(DRAW_LOGITS, temperature, **truncation)
  assert counts.sum() == DRAWS and len(counts) == len(DRAW_LOGITS)
  assert not counts[probs == 0].any()  # padding and anything truncated are never drawn
  if truncation:  # it must cut deep but leave several words for the counts to test
    assert 5 <= np.count_nonzero(probs) <= 100
  # Each count is Binomial(DRAWS, p): allow 5 standard deviations per token (+1 for the
  # rarest), which a correct sampler exceeds with odds of about 1 in 10^4 over all 300 tokens.
  expected = DRAWS * probs
  tolerance = 5 * np.sqrt(DRAWS * probs * (1 - probs)) + 1
  worst = np.argmax(np.abs(counts - expected) - tolerance)
  assert np.all(np.abs(counts - expected) <= tolerance), (
      f'token {worst}: {counts[worst]} draws, expected {expected[worst]:.1f}')


def test_temperature_zero_draws_only_the_argmax(draw_keys):
  tokens = np.asarray(draw_many(DRAW_LOGITS, 0.0, draw_keys))
  assert np.all(tokens == np.argmax(DRAW_LOGITS))


def test_nucleus_equals_a_sort_based_reference():
  rng = np.random.default_rng(8)
  rows, size = 400, 64
  scores = rng.standard_normal((rows, size)) * rng.uniform(0.3, 6, (rows, 1))
  scores[::2] = np.round(scores[::2])  # ties, also at the edge of the nucleus
  scores[::5, 0] = -np.inf
  scores = scores.astype(np.float32)
  def one_row(row, top_p):
    return sampling._nucleus(row, sampling._softmax_weights(jnp.max(row), 1.0), top_p)

  nucleus = jax.jit(jax.vmap(one_row, in_axes=(0, None)))
  checked = 0
  for top_p in (0.05, 0.3, 0.5, 0.8, 0.95):
    kept = np.isfinite(np.asarray(nucleus(scores, top_p)))
    for row, row_kept in zip(scores, kept):
      mass = np.cumsum(np.sort(softmax(row))[::-1])
      if np.min(np.abs(mass - top_p)) < 1e-5:
        continue  # float32 cannot tell which side of top_p this prefix is
      np.testing.assert_array_equal(row_kept, nucleus_reference(row, top_p), err_msg=str(row))
      checked += 1
  assert checked > 0.95 * 5 * rows


@pytest.mark.parametrize('top_k', [0, 5])
def test_a_batch_equals_one_call_per_sequence(small_params, top_k):
  keys = jax.random.split(jax.random.key(3), len(SEEDS))
  decoding = sampling.Decoding(top_k=top_k)
  batch = sampling.generate(SMALL, small_params, SEEDS, keys, NUM_WORDS, 1.0, decoding)
  for i in range(len(SEEDS)):
    one = sampling.generate(SMALL, small_params, SEEDS[i:i + 1], keys[i:i + 1], NUM_WORDS, 1.0,
                            decoding)
    np.testing.assert_array_equal(batch.tokens[i:i + 1], one.tokens)
    np.testing.assert_allclose(batch.log_probs[i:i + 1], one.log_probs, atol=1e-6)


def test_the_key_decides_the_tokens(small_params):
  run = lambda seed: sampling.generate(SMALL, small_params, SEEDS, jax.random.key(seed),
                                       NUM_WORDS, 1.0).tokens
  np.testing.assert_array_equal(run(5), run(5))
  assert not np.array_equal(run(5), run(6))


def test_a_large_stateful_batch_runs(small_params):
  seeds = np.random.default_rng(0).integers(0, VOCAB, (2000, 5)).astype(np.int32)
  generated = sampling.generate(SMALL, small_params, seeds, jax.random.key(0), NUM_WORDS, 1.0,
                                STATEFUL)
  assert generated.tokens.shape == generated.log_probs.shape == (2000, NUM_WORDS)
  tokens, log_probs = np.asarray(generated.tokens), np.asarray(generated.log_probs)
  assert tokens.min() >= 1 and tokens.max() < VOCAB
  assert np.all(np.isfinite(log_probs)) and np.all(log_probs < 0)


def test_log_probs_are_the_models_at_temperature_one(small_params):
  generated = sampling.generate(SMALL, small_params, SEEDS, jax.random.key(2), NUM_WORDS, 1.5)
  greedy, log_probs, _ = window_reference(SMALL, small_params, SEEDS, NUM_WORDS,
                                          tokens=generated.tokens)
  np.testing.assert_allclose(generated.log_probs, log_probs, atol=1e-5)
  assert not np.array_equal(generated.tokens, greedy)  # some draws were not the argmax


@pytest.mark.parametrize('mode', sampling.MODES)
def test_alternatives_are_the_likeliest_words_at_each_step(small_params, mode):
  decoding = sampling.Decoding(mode, alternatives=3)
  seeds = np.pad(SEEDS, ((0, 0), (NUM_WORDS, 0)))  # a window that holds the whole context
  generated = sampling.generate(SMALL, small_params, seeds, jax.random.key(3), NUM_WORDS, 1.0,
                                decoding)
  _, _, every_word = window_reference(SMALL, small_params, seeds, NUM_WORDS,
                                      tokens=generated.tokens)
  likeliest = np.argsort(-every_word, axis=-1, kind='stable')[..., :3]
  np.testing.assert_array_equal(generated.alternatives, likeliest)
  np.testing.assert_allclose(generated.alternative_log_probs,
                             np.take_along_axis(every_word, likeliest, -1), atol=1e-5)
  plain = sampling.generate(SMALL, small_params, seeds, jax.random.key(3), NUM_WORDS, 1.0,
                            sampling.Decoding(mode))
  np.testing.assert_array_equal(plain.tokens, generated.tokens)  # the same draws
  assert plain.alternatives is None


@pytest.mark.parametrize('fields', [{'mode': 'x'}, {'top_p': 0}, {'top_p': 1.5}, {'top_k': -1},
                                    {'beam_width': 0}, {'beam_width': 2, 'top_k': 3},
                                    {'beam_width': 2, 'top_p': 0.9}])
def test_bad_decoding_raises(fields):
  with pytest.raises(UserError):
    sampling.Decoding(**fields)


@pytest.mark.parametrize('model,seeds,num_words,temperature,decoding', [
    (SMALL, SEEDS, 0, 1.0, WINDOW),
    (SMALL, SEEDS, 3, -0.5, WINDOW),
    (SMALL, SEEDS, 3, np.nan, WINDOW),
    (SMALL, SEEDS[0], 3, 1.0, WINDOW),
    (SMALL, SEEDS[:, :0], 3, 1.0, WINDOW),
    (small_model(bidirectional=True), SEEDS, 3, 1.0, STATEFUL),
    (SMALL, SEEDS, 3, 1.0, sampling.Decoding(top_k=VOCAB + 1)),
    (SMALL, SEEDS, 3, 1.0, sampling.Decoding(beam_width=VOCAB)),
], ids=['no_words', 'negative_temperature', 'nan_temperature', '1d_seeds', 'empty_seeds',
        'stateful_bidirectional', 'top_k_above_vocab', 'beam_above_vocab'])
def test_bad_generate_arguments_raise(small_params, model, seeds, num_words, temperature,
                                      decoding):
  with pytest.raises(UserError):
    sampling.generate(model, small_params, seeds, jax.random.key(0), num_words, temperature,
                      decoding)


def test_bad_key_shape_raises(small_params):
  with pytest.raises(UserError, match='key'):
    sampling.generate(SMALL, small_params, SEEDS, jax.random.split(jax.random.key(0), 2), 3)


# The model saw windows of 4 words read from a zero state: stateful decoding keeps to the cycle
# while the context stays near that length, and wanders once it has grown well beyond it.
@pytest.mark.parametrize('decoding,num_words', [(WINDOW, 6), (STATEFUL, 2)], ids=sampling.MODES)
def test_a_trained_model_continues_the_cycle(trained_cell, decoding, num_words):
  workdir, _ = trained_cell
  _, tokenizer, model, params = train.load(workdir)
  prompt = tokenizer.texts_to_sequences([' '.join(CYCLE[2:6])])
  generated = sampling.generate(model, params, np.asarray(prompt), jax.random.key(0), num_words,
                                0.05, decoding)
  words = tokenizer.sequences_to_texts(np.asarray(generated.tokens).tolist())[0].split()
  assert words == (CYCLE * 2)[6:6 + num_words]


@pytest.mark.parametrize('mode', sampling.MODES)
def test_the_unknown_word_is_never_drawn_however_likely(small_params, mode):
  # The unknown word (id 1) outscores every other by far: without the ban it is most draws.
  favoured = {**small_params, 'logits': {**small_params['logits'],
                                         'bias': small_params['logits']['bias'].at[1].add(8.0)}}
  key = jax.random.key(0)
  free = sampling.generate(SMALL, favoured, SEEDS, key, NUM_WORDS, 1.0, sampling.Decoding(mode))
  assert np.mean(np.asarray(free.tokens) == 1) > 0.5
  for decoding in (sampling.Decoding(mode, unknown_id=1),
                   sampling.Decoding(mode, beam_width=2, unknown_id=1)):
    banned = sampling.generate(SMALL, favoured, SEEDS, key, NUM_WORDS, 1.0, decoding)
    assert not np.any(np.asarray(banned.tokens) == 1)
