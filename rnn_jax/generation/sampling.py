"""Text generation from a WordRNN: one compiled program continues a whole batch of seeds.

The step is written for one sequence and batched with `jax.vmap`; the loop over new words is a
`lax.scan`. The context is read in one of two ways:

  window    the walkthrough's: before every word the model re-reads the last `training_length`
            tokens (shorter seeds are left-padded with 0, as Keras `pad_sequences`, and the
            model skips the padding: its state carries over it). The work per word grows with
            the window, and nothing before the window is remembered.
  stateful  the seed is read once, then each new word advances every recurrent layer by one step:
            constant work per word, and the context grows beyond the window. The model was
            trained on windows from a zero state, so context far beyond `training_length` is
            territory it has not seen. Bidirectional models read whole windows: window only.

Both call the model that trains (`WordRNN.read` and `WordRNN.predict`), so while the context
fits in the window they give the same tokens under the same keys.

Decoding: temperature (the walkthrough's "diversity", logits / T; T = 0 is greedy), top-k,
top-p (nucleus), or beam search. Padding (id 0) is never a word, so it is never generated.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.corpus import seeds
from rnn_jax.errors import UserError
from rnn_jax.model.word_rnn import WordRNN
from rnn_jax.training import parallel

MODES = ('window', 'stateful')


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How each next word is chosen; one compiled program per distinct setting."""
  mode: str = 'window'  # 'window' re-reads the whole window per word; 'stateful' carries state
  top_k: int = 0  # draw among the k likeliest words; 0 = among all
  top_p: float = 1.0  # draw among the fewest likeliest words holding this much probability
  beam_width: int = 1  # > 1: beam search for the likeliest continuation (nothing is drawn)
  unknown_id: int = 0  # the vocabulary's unknown-word id, never drawn as padding never is
  alternatives: int = 0  # also the likeliest this many words at each step (temperature 1)

  def __post_init__(self):
    if self.mode not in MODES:
      raise UserError(f'mode must be one of {MODES}, got {self.mode!r}')
    if self.top_k < 0:
      raise UserError(f'top_k must be >= 0, got {self.top_k}')
    if not 0 < self.top_p <= 1:
      raise UserError(f'top_p must be in (0, 1], got {self.top_p}')
    if self.beam_width < 1:
      raise UserError(f'beam_width must be >= 1, got {self.beam_width}')
    if self.beam_width > 1 and (self.top_k or self.top_p < 1):
      raise UserError('beam search draws nothing: top_k and top_p do not apply to it')
    if self.alternatives < 0 or self.alternatives and self.beam_width > 1:
      raise UserError(f'alternatives must be >= 0, and 0 with beam search, got '
                      f'{self.alternatives}')


class Generated(NamedTuple):
  tokens: jax.Array  # int32[batch, num_words]
  log_probs: jax.Array  # f32[batch, num_words]: the model's log-probability of each token (T = 1)
  # int32[batch, num_words, k] and f32[...]: with Decoding.alternatives = k, the k likeliest
  # words at each step, likeliest first, and their log-probabilities (T = 1); else None.
  alternatives: jax.Array | None = None
  alternative_log_probs: jax.Array | None = None


def generate(model: WordRNN, params: Any, prompts: np.ndarray | jax.Array,
             key: jax.Array, num_words: int, temperature: float | np.ndarray = 1.0,
             decoding: Decoding = Decoding()) -> Generated:
  """Continues each prompt (seed token sequence) by `num_words` tokens.

  Args:
    model: the WordRNN the params belong to.
    params: its parameters (`params['embed']`, ...).
    prompts: int32[batch, time], left-padded with 0 (`seeds.pad`). Window mode slides a
      window of `time` tokens: pad to `training_length` for the walkthrough's semantics.
      Stateful mode reads every token, skipping the padding.
    key: a key for the call, split into one per sequence, or keys[batch], one per sequence;
      the same keys give the same text, whatever else shares the batch.
    num_words: tokens to generate per prompt.
    temperature: a float, or f32[batch] to give each sequence its own; 0 is greedy. Beam
      search ignores it.
    decoding: mode, top-k, top-p and beam width.

  Returns:
    The generated tokens and their log-probabilities under the model. On several local devices
    the batch is split over them, with the same results.
  """
  prompts = jnp.asarray(prompts, jnp.int32)
  if prompts.ndim != 2 or not prompts.shape[0] or not prompts.shape[1]:
    raise UserError(f'prompts must be int32[batch, time], batch and time >= 1, '
                    f'got shape {prompts.shape}')
  if num_words < 1:
    raise UserError(f'num_words must be >= 1, got {num_words}')
  if decoding.mode == 'stateful' and model.config.bidirectional:
    raise UserError('a bidirectional model reads whole windows: use mode=window')
  if decoding.top_k > model.vocab_size:
    raise UserError(f'top_k must be at most the vocabulary size {model.vocab_size}, '
                    f'got {decoding.top_k}')
  if decoding.beam_width >= model.vocab_size:
    raise UserError(f'beam_width must be below the vocabulary size {model.vocab_size}')
  keys = _sequence_keys(key, prompts.shape[0])
  temperature = np.asarray(temperature, np.float32)
  if temperature.shape not in ((), prompts.shape[:1]):
    raise UserError(f'temperature must be one value or one per sequence ({prompts.shape[0]}), '
                    f'got shape {temperature.shape}')
  temperature = np.broadcast_to(temperature, prompts.shape[:1])
  if not np.all(np.isfinite(temperature) & (temperature >= 0)):
    raise UserError('temperature must be finite and >= 0')
  params, rows = parallel.spread_rows(params, prompts, keys, jnp.asarray(temperature))
  generated = _generate(model, params, *rows, num_words=num_words, decoding=decoding)
  return jax.tree.map(lambda part: part[:len(prompts)], generated)


def _sequence_keys(key: jax.Array, batch: int) -> jax.Array:
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # a legacy uint32 key
  if key.shape == ():
    return jax.random.split(key, batch)
  if key.shape != (batch,):
    raise UserError(f'key must be one key or one per sequence ({batch}), got shape {key.shape}')
  return key


@functools.partial(jax.jit, static_argnames=('model', 'num_words', 'decoding'))
def _generate(model, params, prompts, keys, temperature, *, num_words, decoding) -> Generated:
  # A bias of -inf keeps padding (id 0), which is never a word, out of every draw and beam, and
  # the unknown word, which stands for words the text would show.
  bias = params['logits']['bias'].at[jnp.array([0, decoding.unknown_id])].set(-jnp.inf)
  params = {**params, 'logits': {**params['logits'], 'bias': bias}}
  reader = _READERS[decoding.mode](model, params)
  if decoding.beam_width > 1:
    beam = functools.partial(_beam_search, reader, num_words=num_words, width=decoding.beam_width)
    return jax.vmap(beam)(prompts)
  sample = functools.partial(_sample, reader, num_words=num_words, decoding=decoding)
  return jax.vmap(sample)(prompts, keys, temperature)


class _Reader(NamedTuple):
  """How one sequence's context is read; a context is whatever the mode carries."""
  start: Callable[[jax.Array], Any]  # seed int32[time] -> context
  logits: Callable[[Any], jax.Array]  # context -> f32[vocab]
  advance: Callable[[Any, jax.Array], Any]  # (context, token int32[]) -> context


def _window_reader(model, params) -> _Reader:
  variables = {'params': params}

  def logits(window):
    # The left padding of a short seed is skipped, as stateful mode skips it.
    state = model.apply(variables, window[None], method=WordRNN.read)
    return model.apply(variables, state, method=WordRNN.predict)[0]

  def advance(window, token):
    return jnp.append(window[1:], token)

  return _Reader(lambda seed: seed, logits, advance)


def _stateful_reader(model, params) -> _Reader:
  variables = {'params': params}

  def start(seed):
    return model.apply(variables, seed[None], method=WordRNN.read)

  def logits(state):
    return model.apply(variables, state, method=WordRNN.predict)[0]

  def advance(state, token):
    return model.apply(variables, token[None, None], state, method=WordRNN.read)

  return _Reader(start, logits, advance)


_READERS = {'window': _window_reader, 'stateful': _stateful_reader}


def _sample(reader: _Reader, seed, key, temperature, *, num_words: int,
            decoding: Decoding) -> Generated:
  def step(context, uniforms):
    logits = reader.logits(context)
    token = _draw(logits, temperature, uniforms, decoding.top_k, decoding.top_p)
    log_probs = logits - jax.nn.logsumexp(logits)
    alternatives = (jax.lax.top_k(log_probs, decoding.alternatives)[::-1]
                    if decoding.alternatives else (None, None))
    return reader.advance(context, token), (token, log_probs[token], *alternatives)

  # Every step's random numbers at once: threefry inside the loop is a small loop of its own
  # per step, which on a CPU costs more than the numbers are worth.
  _, generated = jax.lax.scan(step, reader.start(seed), jax.random.uniform(key, (num_words, 2)))
  return Generated(*generated)


def draw(logits: jax.Array, temperature: jax.Array, key: jax.Array, *, top_k: int = 0,
         top_p: float = 1.0) -> jax.Array:
  """One token from softmax(logits / temperature), truncated to top-k and then top-p.

  Args:
    logits: f32[vocab]; -inf for tokens that must not be drawn.
    temperature: f32[]; 0 draws among the highest logits only (greedy).
    key: the draw's PRNG key.
    top_k: keep the k highest logits (0 keeps all).
    top_p: keep the fewest highest logits whose probability (after temperature) reaches top_p;
      logits tied with the last one kept are kept too.

  Returns:
    int32[] token id.
  """
  return _draw(logits, temperature, jax.random.uniform(key, (2,)), top_k, top_p)


def _draw(logits: jax.Array, temperature: jax.Array, uniforms: jax.Array, top_k: int,
          top_p: float) -> jax.Array:
  """`draw` with its two uniforms in [0, 1) given: f32[2]."""
  scores, candidates = logits, None
  if top_k:
    scores, candidates = jax.lax.top_k(logits, top_k)
  weigh = _softmax_weights(jnp.max(scores), temperature)
  if top_p < 1:
    scores = _nucleus(scores, weigh, top_p)
  choice = _inverse_cdf(scores, weigh, uniforms)
  return (choice if candidates is None else candidates[choice]).astype(jnp.int32)


def _softmax_weights(top: jax.Array, temperature: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """Scores -> unnormalised softmax(scores / temperature); temperature 0 weighs the maxima only.

  Elementwise, so XLA fuses it into each reduction that reads it: the [batch, vocab] weights are
  never written to memory, which on a CPU costs as much as the output layer's matmul.
  """
  greedy = temperature == 0
  # For greedy, the largest float as 1 / temperature sends every score below the top (by more
  # than 3e-37) to exp(-inf) = 0. A select would be exact too but keeps XLA from fusing the exp
  # into the reductions: 15% of a generated token's time.
  inverse = jnp.where(greedy, jnp.finfo(jnp.float32).max, 1 / jnp.where(greedy, 1.0, temperature))
  return lambda scores: jnp.exp((scores - top) * inverse)


def _nucleus(scores: jax.Array, weigh, top_p: float) -> jax.Array:
  """-inf outside the fewest highest scores whose weight reaches top_p of the total.

  A full sort of 16k scores per row costs seconds per step on a CPU. Instead a bisection over
  the bit patterns of the weights (non-negative floats, ordered as their bits) finds the highest
  weight threshold that keeps the mass: 30 passes over the weights, exact.
  """
  weights = weigh(scores)
  needed = top_p * jnp.sum(weights)

  def halve(_, bounds):
    low, high = bounds  # a threshold of low keeps enough weight, high does not
    middle = low + (high - low) // 2  # low + high would overflow int32
    holds = jnp.sum(jnp.where(weights >= _float(middle), weights, 0.0)) >= needed
    return jnp.where(holds, middle, low), jnp.where(holds, high, middle)

  above_one = jax.lax.bitcast_convert_type(jnp.float32(1), jnp.int32) + 1  # the top weighs 1
  low, _ = jax.lax.fori_loop(0, 30, halve, (jnp.int32(0), above_one))
  return jnp.where(weights >= _float(low), scores, -jnp.inf)


def _float(bits: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _inverse_cdf(scores: jax.Array, weigh, uniforms: jax.Array) -> jax.Array:
  """An index drawn with probability proportional to weigh(scores), from uniforms: f32[2]; exact.

  `jax.random.categorical` draws one Gumbel number per word, several times the cost of the
  output layer's matmul at vocabulary 16k. Here the words fall into blocks of about sqrt(n):
  one uniform picks a block by its weight, a second a word inside it.
  """
  n = scores.shape[-1]
  size = 2 ** math.ceil(math.log2(math.sqrt(n)))
  # reduce_window keeps the weights fused into the sums; a reshape-and-sum runs 6x slower.
  block_weights = jax.lax.reduce_window(weigh(scores), 0.0, jax.lax.add, (size,), (size,),
                                        padding=((0, -n % size),))
  block = _search(block_weights, uniforms[0])
  # The last block may be short: its slice starts earlier and masks what precedes the block.
  start = jnp.minimum(block * size, n - size)
  positions = start + jnp.arange(size)
  weights = jnp.where(positions >= block * size,
                      weigh(jax.lax.dynamic_slice(scores, (start,), (size,))), 0.0)
  return start + _search(weights, uniforms[1])


def _search(weights: jax.Array, u: jax.Array) -> jax.Array:
  """The first i with cumsum(weights)[i] > u * sum(weights), u in [0, 1): never a zero weight."""
  cumulative = jnp.cumsum(weights)
  index = jnp.sum(cumulative <= u * cumulative[-1])
  # u * total can round up to total: fall back to the last index with any weight.
  last = jnp.max(jnp.where(weights > 0, jnp.arange(weights.shape[0]), 0))
  return jnp.minimum(index, last)


def _beam_search(reader: _Reader, seed, *, num_words: int, width: int) -> Generated:
  """The likeliest continuation that a beam of `width` hypotheses finds."""
  start = reader.start(seed)
  contexts = jax.tree.map(lambda x: jnp.repeat(x[None], width, axis=0), start)
  # Only one live hypothesis at first, or the beam would fill with copies of it.
  scores = jnp.full(width, -jnp.inf).at[0].set(0.0)
  tokens = jnp.zeros((width, num_words), jnp.int32)
  log_probs = jnp.zeros((width, num_words), jnp.float32)

  def step(carry, t):
    contexts, scores, tokens, log_probs = carry
    step_log_probs = jax.nn.log_softmax(jax.vmap(reader.logits)(contexts))
    vocab = step_log_probs.shape[-1]
    scores, best = jax.lax.top_k((scores[:, None] + step_log_probs).ravel(), width)
    origin, token = best // vocab, (best % vocab).astype(jnp.int32)
    contexts = jax.vmap(reader.advance)(jax.tree.map(lambda x: x[origin], contexts), token)
    tokens = tokens[origin].at[:, t].set(token)
    log_probs = log_probs[origin].at[:, t].set(step_log_probs[origin, token])
    return (contexts, scores, tokens, log_probs), None

  (_, _, tokens, log_probs), _ = jax.lax.scan(
      step, (contexts, scores, tokens, log_probs), jnp.arange(num_words))
  return Generated(tokens[0], log_probs[0])


def continue_seeds(model: WordRNN, params: Any, seed_list: list[seeds.Seed],
                   training_length: int, key: jax.Array, num_words: int,
                   temperature: float | np.ndarray = 1.0, decoding: Decoding = Decoding(),
                   num_samples: int = 1) -> Generated:
  """`num_samples` continuations of each seed, seed-major: row i continues seed i // num_samples.

  Window mode pads or cuts each seed to `training_length` tokens, the walkthrough's window;
  stateful mode reads each seed whole.
  """
  if num_samples < 1:
    raise UserError(f'num_samples must be >= 1, got {num_samples}')
  tokens = [seed.tokens for seed in seed_list]
  length = training_length if decoding.mode == 'window' else max(map(len, tokens))
  batch = np.repeat(seeds.pad(tokens, length), num_samples, axis=0)
  return generate(model, params, batch, key, num_words, temperature, decoding)
