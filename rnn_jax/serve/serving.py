"""A work dir's model behind a server: checked requests, micro-batched into fixed compiled shapes.

Every request becomes rows of the batched generator (`sampling.generate`): one row per sample,
each with its own key and temperature, so any temperatures share a call and a row's text does
not depend on what else shares it. A call generates `Limits.chunk_words` words; a longer request
takes several calls, each reading the context the last one left (the window, or everything so
far in stateful mode), and other requests join it between them: no request waits behind another
for more than a chunk. What `generate` compiles into its program cannot differ inside a call:
requests are grouped by (top-k, top-p). To keep the number of programs small and known, every
call generates the same number of words (the last chunk is cut back), the rows of a call are
padded to a few batch sizes (`Limits.batch_sizes`), and top-k and top-p come from short menus.
`Service.warm_up` compiles every batch size of the default decoding (no top-k, no top-p) before
serving; a menu's other entries compile on their first use, once for each batch size.
"""

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rnn_jax import train
from rnn_jax.corpus import data
from rnn_jax.corpus import seeds
from rnn_jax.errors import UserError
from rnn_jax.generation import sampling
from rnn_jax.serve import batching
from rnn_jax.serve import game
from rnn_jax.training import checkpoints

MAX_RNG_SEED = 2**32 - 1
MAX_QUOTED = 60  # characters of a refused value that its message shows
_KINDS = {list: 'an array', dict: 'an object'}
DEFAULT_WORDS = 50  # words per continuation and per game round, as experiments.sample and game
ALTERNATIVES = 5  # the likeliest words each call also returns for every step, for streaming


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask for, and the shapes the generator is compiled for."""
  batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)  # a call's rows pad to the first that fits
  max_words: int = 100  # words per continuation
  # Words per generator call: more make others wait longer, fewer add calls' overhead.
  chunk_words: int = 10
  max_samples: int = 8  # continuations per request
  max_seed_chars: int = 1000
  max_temperature: float = 2.0
  top_k_choices: tuple[int, ...] = (0, 10, 40)  # 0: no top-k; those over the vocabulary go
  top_p_choices: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8)  # 1.0: no top-p

  def __post_init__(self):
    sizes = self.batch_sizes
    if not sizes or sizes[0] < 1 or list(sizes) != sorted(set(sizes)):
      raise UserError(f'batch_sizes must be increasing positive integers, got {sizes}')
    if not 1 <= self.chunk_words <= self.max_words:
      raise UserError(f'chunk_words must be from 1 to max_words {self.max_words}, '
                      f'got {self.chunk_words}')
    if not 1 <= self.max_samples <= self.batch_sizes[-1]:
      raise UserError(f'max_samples must be from 1 to the largest batch size '
                      f'{self.batch_sizes[-1]}, got {self.max_samples}')
    if 0 not in self.top_k_choices or 1.0 not in self.top_p_choices:
      raise UserError('the top-k menu must offer 0 and the top-p menu 1.0 (no truncation)')

  @property
  def default_words(self) -> int:
    return min(DEFAULT_WORDS, self.max_words)


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to continue a seed; `Settings.parse` checks a request's fields against the Limits."""
  num_words: int
  temperature: float = 0.75
  top_k: int = 0
  top_p: float = 1.0
  num_samples: int = 1
  rng_seed: int | None = None  # the same seed and settings give the same text; None: a new one

  FIELDS = ('num_words', 'temperature', 'top_k', 'top_p', 'num_samples', 'rng_seed')

  @classmethod
  def parse(cls, fields: Mapping[str, Any], limits: Limits) -> 'Settings':
    """Settings from JSON values or form strings; UserError for a bad one.

    A field that is absent, null or an empty string takes its default.
    """
    return cls(
        num_words=_within(fields, 'num_words', int, limits.default_words, 1, limits.max_words),
        temperature=_within(fields, 'temperature', float, cls.temperature, 0,
                            limits.max_temperature),
        top_k=_among(fields, 'top_k', int, 0, limits.top_k_choices),
        top_p=_among(fields, 'top_p', float, 1.0, limits.top_p_choices),
        num_samples=_within(fields, 'num_samples', int, 1, 1, limits.max_samples),
        rng_seed=_within(fields, 'rng_seed', int, None, 0, MAX_RNG_SEED))


def quoted(value: Any) -> str:
  """A refused value as its message shows it, on one line: a number or a text by its repr (an
  integer whole, a float with the digits that put it out of range), `cut`; a container by its
  JSON kind, as repr would recurse as deep as it nests."""
  if not isinstance(value, str | int | float):
    return _KINDS.get(type(value), type(value).__name__)
  return cut(repr(value))


def cut(text: str) -> str:
  """The text, or its first MAX_QUOTED characters and its length: a message stays short."""
  return text if len(text) <= MAX_QUOTED else f'{text[:MAX_QUOTED]}... ({len(text):,} characters)'


def _value(fields: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
  value = fields.get(name)
  if value is None or (isinstance(value, str) and not value.strip()):
    return default
  if isinstance(value, str):
    with contextlib.suppress(ValueError):  # which int() also raises past 4,300 digits
      return kind(value)
  elif isinstance(value, int if kind is int else int | float) and not isinstance(value, bool):
    # An int stays one until it is in range: float() of one past 1e308 overflows.
    return value
  raise UserError(f'{name} must be {"an integer" if kind is int else "a number"}, '
                  f'got {quoted(value)}')


def _within(fields, name, kind, default, low, high):
  value = _value(fields, name, kind, default)
  if value is None:
    return None
  if not low <= value <= high:  # NaN is in no range
    raise UserError(f'{name} must be from {low!r} to {high!r}, got {quoted(value)}')
  return kind(value)


def _among(fields, name, kind, default, choices):
  value = _value(fields, name, kind, default)
  if value not in choices:
    raise UserError(f'{name} must be one of {", ".join(map(repr, choices))}, '
                    f'got {quoted(value)}')
  return kind(value)


class Sample(NamedTuple):
  generated: str  # the continuation, shown as the walkthrough showed it
  mean_logprob: float  # mean log-probability of its words under the model (temperature 1)


@dataclasses.dataclass(frozen=True)
class Continuations:
  seed: str  # the seed as the model read it
  samples: list[Sample]
  settings: Settings  # rng_seed filled in: it replays the request
  unknown_words: list[str] = dataclasses.field(default_factory=list)  # of the seed text
  actual: str | None = None  # the corpus's own continuation of a random passage


class _Job(NamedTuple):
  """One request's rows of a call."""
  prompts: np.ndarray  # int32[rows, Service.context_length]: the context so far, left-padded
  keys: np.ndarray  # uint32[rows, 2]: raw threefry keys, one per row
  temperatures: np.ndarray  # f32[rows]


class Service:
  """A trained run served through a micro-batcher; `async with service.batcher:` to serve.

  Args:
    workdir: the trained run.
    checkpoint: 'best', 'latest' or a step.
    mode: 'window' or 'stateful' (`sampling.MODES`); seeds are read through their last
      training_length words in both.
    limits: caps and compiled shapes.
    wait_s: how long a new request waits for others to share its call.
    micro_batching: False gives every request a call of its own, for comparison.
  """

  def __init__(self, workdir: str | Path, checkpoint: str | int = 'best', mode: str = 'window',
               limits: Limits = Limits(), wait_s: float = 0.005, micro_batching: bool = True):
    sampling.Decoding(mode)  # a bad mode fails here, before anything loads
    self.config, self.tokenizer, self.model, self.params = train.load(workdir, checkpoint)
    self.checkpoint, self.step = checkpoint, _checkpoint_step(workdir, checkpoint)
    self.mode = mode
    self.limits = dataclasses.replace(limits, top_k_choices=tuple(
        k for k in limits.top_k_choices if k <= self.tokenizer.vocab_size))
    # Where random passages come from.
    self.texts = data.prepare_run(self.config, self.tokenizer).valid_texts
    self.batcher = batching.MicroBatcher(self._run, max_rows=limits.batch_sizes[-1],
                                         wait_s=wait_s, gather=micro_batching)

  @property
  def training_length(self) -> int:
    return self.config.data.training_length

  @property
  def context_length(self) -> int:
    """The tokens a call reads: the window, or in stateful mode all that can precede a chunk
    (the seed's window and every chunk but the last), so that every call has one shape."""
    if self.mode == 'window':
      return self.training_length
    chunk = self.limits.chunk_words
    return self.training_length + chunk * (-(-self.limits.max_words // chunk) - 1)

  def warm_up(self) -> int:
    """Compiles the default decoding for every batch size; returns how many programs."""
    for size in self.limits.batch_sizes:
      prompts = np.zeros((size, self.context_length), np.int32)
      self._run((0, 1.0), [_Job(prompts, np.zeros((size, 2), np.uint32),
                                np.ones(size, np.float32))])
    return len(self.limits.batch_sizes)

  def health(self) -> dict[str, Any]:
    return {'status': 'ok', 'model': type(self.model).__name__, 'cell': self.config.model.cell,
            'model_config': dataclasses.asdict(self.config.model),
            'vocab_size': self.tokenizer.vocab_size, 'training_length': self.training_length,
            'checkpoint': self.checkpoint, 'checkpoint_step': self.step, 'mode': self.mode,
            'limits': dataclasses.asdict(self.limits),
            'batching': dict(self.batcher.counts)}

  def seed(self, seed_text: Any) -> seeds.Seed:
    """The user's text as the model reads it; UserError for text that is empty, too long or
    unknown."""
    _check_seed_text(seed_text, self.limits.max_seed_chars)
    return seeds.from_text(seed_text, self.tokenizer)

  async def continue_text(self, seed_text: Any, settings: Settings) -> Continuations:
    """Continuations of the user's text."""
    seed = self.seed(seed_text)
    settings = with_rng_seed(settings)
    rng = np.random.default_rng(settings.rng_seed)
    samples = await self._samples(seed.tokens, settings, rng)
    return Continuations(self.show(seed.tokens), samples, settings, seed.unknown)

  async def continue_passage(self, settings: Settings) -> Continuations:
    """Continuations of a random passage of the validation texts, with its real continuation."""
    settings = with_rng_seed(settings)
    rng = np.random.default_rng(settings.rng_seed)
    passage = self._passage(settings.num_words, rng)
    samples = await self._samples(passage.tokens, settings, rng)
    return Continuations(self.show(passage.tokens), samples, settings,
                         actual=self.show(passage.actual))

  async def game_round(self, rng_seed: int | None = None) -> game.Round:
    """A round of the human-or-machine game, its continuations at random temperatures."""
    rng = np.random.default_rng(_fresh_seed() if rng_seed is None else rng_seed)
    words = self.limits.default_words
    passage = self._passage(words, rng)
    temperatures = rng.uniform(*game.TEMPERATURES, size=game.CHOICES - 1).astype(np.float32)
    tokens, _ = await self._generate(passage.tokens, temperatures, words, 0, 1.0, rng)
    return game.arrange(self.tokenizer, passage, tokens, temperatures, rng)

  def _passage(self, num_words: int, rng: np.random.Generator) -> seeds.Seed:
    return seeds.random_passages(self.texts, self.training_length, 1, num_words, rng)[0]

  def show(self, tokens: Sequence[int]) -> str:
    return seeds.show(self.tokenizer, tokens)

  async def _samples(self, tokens: list[int], settings: Settings,
                     rng: np.random.Generator) -> list[Sample]:
    temperatures = np.full(settings.num_samples, settings.temperature, np.float32)
    generated, log_probs = await self._generate(tokens, temperatures, settings.num_words,
                                                settings.top_k, settings.top_p, rng)
    return [Sample(self.show(g), round(float(p.mean()), 4))
            for g, p in zip(generated, log_probs)]

  async def _generate(self, tokens: list[int], temperatures: np.ndarray, num_words: int,
                      top_k: int, top_p: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(int32[rows, num_words], f32[rows, num_words]): a row per temperature, the words and
    their log-probabilities."""
    parts = [part[:2] async for part in self._chunks(tokens, temperatures, num_words, top_k,
                                                     top_p, rng)]
    return tuple(np.concatenate(part, axis=1) for part in zip(*parts))

  async def chunks(self, tokens: list[int], settings: Settings,
                   rng: np.random.Generator) -> AsyncIterator[tuple[np.ndarray, ...]]:
    """Each call's (int32[rows, words], f32[rows, words], int32[rows, words, ALTERNATIVES],
    f32[...]): the words, their log-probabilities, and the likeliest words at each step with
    theirs. A row per sample, a call per chunk of words, each reading the context the last one
    left; the last chunk is cut back to num_words."""
    temperatures = np.full(settings.num_samples, settings.temperature, np.float32)
    async for part in self._chunks(tokens, temperatures, settings.num_words, settings.top_k,
                                   settings.top_p, rng):
      yield part

  async def _chunks(self, tokens: list[int], temperatures: np.ndarray, num_words: int,
                    top_k: int, top_p: float,
                    rng: np.random.Generator) -> AsyncIterator[tuple[np.ndarray, ...]]:
    rows, chunk = len(temperatures), self.limits.chunk_words
    # The seed cut to its window, as the model was trained, then padded to what a call reads.
    context = np.repeat(seeds.pad(seeds.pad([tokens], self.training_length),
                                  self.context_length), rows, axis=0)
    # Call-major, so that the first calls' keys, and text, do not depend on num_words.
    keys = rng.integers(0, 2**32, size=(-(-num_words // chunk), rows, 2), dtype=np.uint32)
    for call, call_keys in enumerate(keys):
      part = await self.batcher.submit(
          (top_k, top_p), _Job(context, call_keys, temperatures), rows, continues=call > 0)
      context = np.concatenate([context, part[0]], axis=1)[:, -context.shape[1]:]
      yield tuple(array[:, :num_words - call * chunk] for array in part)

  def _run(self, group: tuple[int, float],
           jobs: Sequence[_Job]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One generator call for the jobs' rows, padded to a batch size; each job's rows back."""
    top_k, top_p = group
    rows = sum(len(job.temperatures) for job in jobs)
    size = next(s for s in self.limits.batch_sizes if s >= rows)
    generated = sampling.generate(
        self.model, self.params, _stack([j.prompts for j in jobs], size, 0),
        _stack([j.keys for j in jobs], size, 0), self.limits.chunk_words,
        _stack([j.temperatures for j in jobs], size, 1.0),
        sampling.Decoding(self.mode, top_k, top_p, unknown_id=self.tokenizer.unknown_id,
                          alternatives=ALTERNATIVES))
    ends = np.cumsum([len(job.temperatures) for job in jobs])[:-1]
    return list(zip(*(np.split(np.asarray(part)[:rows], ends) for part in generated)))


def _stack(arrays: Sequence[np.ndarray], size: int, fill: float) -> np.ndarray:
  """The arrays one after another along axis 0, then rows of `fill` up to `size` rows."""
  rows = sum(len(a) for a in arrays)
  return np.concatenate([*arrays, np.full((size - rows, *arrays[0].shape[1:]), fill,
                                          arrays[0].dtype)])


def _check_seed_text(seed_text: Any, max_chars: int):
  if not isinstance(seed_text, str) or not seed_text.strip():
    raise UserError('seed_text must be some text to continue')
  if len(seed_text) > max_chars:
    raise UserError(f'seed_text must be at most {max_chars} characters, got {len(seed_text)}')
  try:
    seed_text.encode('utf-8')
  except UnicodeEncodeError as e:  # JSON can spell half of a surrogate pair alone: "\ud800"
    raise UserError(f'seed_text must be Unicode text: character {e.start} is half of a '
                    f'surrogate pair ({quoted(seed_text[e.start])})') from None


def with_rng_seed(settings: Settings) -> Settings:
  """The settings, with a fresh rng_seed where they have none."""
  if settings.rng_seed is not None:
    return settings
  return dataclasses.replace(settings, rng_seed=_fresh_seed())


def _fresh_seed() -> int:
  return secrets.randbelow(MAX_RNG_SEED + 1)


def _checkpoint_step(workdir: str | Path, which: str | int) -> int:
  manager = checkpoints.manager(workdir)
  try:
    return checkpoints.step_of(manager, which)
  finally:
    manager.close()
