"""A work dir's model behind a server: checked requests, micro-batched into fixed compiled shapes.

Every request becomes rows of the batched generator (`sampling.generate`): one row per sample,
each with its own key and temperature, so any temperatures share a call and a row's text does
not depend on what else shares it. What `generate` compiles into its program cannot differ
inside a call: requests are grouped by (words to generate, top-k, top-p). To keep the number of
programs small and known, the words are rounded up to a few lengths (`Limits.word_buckets`, cut
back afterwards), the rows of a call are padded to a few batch sizes (`Limits.batch_sizes`), and
top-k and top-p come from short menus. `Service.warm_up` compiles every length and batch size
of the default decoding (no top-k, no top-p) before serving; a menu's other entries compile on
their first use, once for each shape.
"""

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
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
DEFAULT_WORDS = 50  # words per continuation and per game round, as experiments.sample and game


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask for, and the shapes the generator is compiled for."""
  batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)  # a call's rows pad to the first that fits
  word_buckets: tuple[int, ...] = (25, 50, 100)  # words generated: the first >= num_words
  max_samples: int = 8  # continuations per request
  max_seed_chars: int = 1000
  max_temperature: float = 2.0
  top_k_choices: tuple[int, ...] = (0, 10, 40)  # 0: no top-k; those over the vocabulary go
  top_p_choices: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8)  # 1.0: no top-p

  def __post_init__(self):
    for name in ('batch_sizes', 'word_buckets'):
      sizes = getattr(self, name)
      if not sizes or sizes[0] < 1 or list(sizes) != sorted(set(sizes)):
        raise UserError(f'{name} must be increasing positive integers, got {sizes}')
    if not 1 <= self.max_samples <= self.batch_sizes[-1]:
      raise UserError(f'max_samples must be from 1 to the largest batch size '
                      f'{self.batch_sizes[-1]}, got {self.max_samples}')
    if 0 not in self.top_k_choices or 1.0 not in self.top_p_choices:
      raise UserError('the top-k menu must offer 0 and the top-p menu 1.0 (no truncation)')

  @property
  def max_words(self) -> int:
    return self.word_buckets[-1]

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


def _value(fields: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
  value = fields.get(name)
  if value is None or (isinstance(value, str) and not value.strip()):
    return default
  if isinstance(value, str):
    try:
      return kind(value)
    except ValueError:
      pass
  elif isinstance(value, int if kind is int else int | float) and not isinstance(value, bool):
    return kind(value)
  raise UserError(f'{name} must be {"an integer" if kind is int else "a number"}, got {value!r}')


def _within(fields, name, kind, default, low, high):
  value = _value(fields, name, kind, default)
  if value is not None and not low <= value <= high:  # NaN is in no range
    raise UserError(f'{name} must be from {low:g} to {high:g}, got {value:g}')
  return value


def _among(fields, name, kind, default, choices):
  value = _value(fields, name, kind, default)
  if value not in choices:
    raise UserError(f'{name} must be one of {", ".join(f"{c:g}" for c in choices)}, '
                    f'got {value:g}')
  return value


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
  prompts: np.ndarray  # int32[rows, training_length]
  keys: np.ndarray  # uint32[rows, 2]: raw threefry keys, one per row
  temperatures: np.ndarray  # f32[rows]


class Service:
  """A trained run served through a micro-batcher; `async with service.batcher:` to serve.

  Args:
    workdir: the trained run.
    checkpoint: 'best' or 'latest'.
    mode: 'window' or 'stateful' (`sampling.MODES`); seeds are read through their last
      training_length words in both.
    limits: caps and compiled shapes.
    wait_s: how long a request waits for others to share its call.
    micro_batching: False gives every request a call of its own, for comparison.
  """

  def __init__(self, workdir: str | Path, checkpoint: str = 'best', mode: str = 'window',
               limits: Limits = Limits(), wait_s: float = 0.005, micro_batching: bool = True):
    sampling.Decoding(mode)  # a bad mode fails here, before anything loads
    self.config, self.tokenizer, self.model, self.params = train.load(workdir, checkpoint)
    self.checkpoint, self.step = checkpoint, _checkpoint_step(workdir, checkpoint)
    self.mode = mode
    self.limits = dataclasses.replace(limits, top_k_choices=tuple(
        k for k in limits.top_k_choices if k <= self.tokenizer.vocab_size))
    self.texts = data.prepare(self.config).valid_texts  # where random passages come from
    self.batcher = batching.MicroBatcher(self._run, max_rows=limits.batch_sizes[-1],
                                         wait_s=wait_s, gather=micro_batching)

  @property
  def training_length(self) -> int:
    return self.config.data.training_length

  def warm_up(self) -> int:
    """Compiles the default decoding for every batch size and word bucket; returns how many."""
    for words in self.limits.word_buckets:
      for size in self.limits.batch_sizes:
        prompts = np.zeros((size, self.training_length), np.int32)
        self._run((words, 0, 1.0), [_Job(prompts, np.zeros((size, 2), np.uint32),
                                         np.ones(size, np.float32))])
    return len(self.limits.word_buckets) * len(self.limits.batch_sizes)

  def health(self) -> dict[str, Any]:
    return {'status': 'ok', 'model': type(self.model).__name__, 'cell': self.config.model.cell,
            'model_config': dataclasses.asdict(self.config.model),
            'vocab_size': self.tokenizer.vocab_size, 'training_length': self.training_length,
            'checkpoint': self.checkpoint, 'checkpoint_step': self.step, 'mode': self.mode,
            'limits': dataclasses.asdict(self.limits) | {'max_words': self.limits.max_words},
            'batching': dict(self.batcher.counts)}

  async def continue_text(self, seed_text: Any, settings: Settings) -> Continuations:
    """Continuations of the user's text; UserError for text that is empty, too long or unknown."""
    if not isinstance(seed_text, str) or not seed_text.strip():
      raise UserError('seed_text must be some text to continue')
    if len(seed_text) > self.limits.max_seed_chars:
      raise UserError(f'seed_text must be at most {self.limits.max_seed_chars} characters, '
                      f'got {len(seed_text)}')
    seed = seeds.from_text(seed_text, self.tokenizer)
    settings = _with_rng_seed(settings)
    rng = np.random.default_rng(settings.rng_seed)
    samples = await self._samples(seed.tokens, settings, rng)
    return Continuations(self._show(seed.tokens), samples, settings, seed.unknown)

  async def continue_passage(self, settings: Settings) -> Continuations:
    """Continuations of a random passage of the validation texts, with its real continuation."""
    settings = _with_rng_seed(settings)
    rng = np.random.default_rng(settings.rng_seed)
    passage = self._passage(settings.num_words, rng)
    samples = await self._samples(passage.tokens, settings, rng)
    return Continuations(self._show(passage.tokens), samples, settings,
                         actual=self._show(passage.actual))

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

  def _show(self, tokens: Sequence[int]) -> str:
    return seeds.show(self.tokenizer, tokens)

  async def _samples(self, tokens: list[int], settings: Settings,
                     rng: np.random.Generator) -> list[Sample]:
    temperatures = np.full(settings.num_samples, settings.temperature, np.float32)
    generated, log_probs = await self._generate(tokens, temperatures, settings.num_words,
                                                settings.top_k, settings.top_p, rng)
    return [Sample(self._show(g), round(float(p.mean()), 4))
            for g, p in zip(generated, log_probs)]

  async def _generate(self, tokens: list[int], temperatures: np.ndarray, num_words: int,
                      top_k: int, top_p: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(int32[rows, num_words], f32[rows, num_words]): one row per temperature."""
    rows = len(temperatures)
    prompts = np.repeat(seeds.pad([tokens], self.training_length), rows, axis=0)
    keys = rng.integers(0, 2**32, size=(rows, 2), dtype=np.uint32)
    bucket = next(b for b in self.limits.word_buckets if b >= num_words)
    generated, log_probs = await self.batcher.submit(
        (bucket, top_k, top_p), _Job(prompts, keys, temperatures), rows)
    return generated[:, :num_words], log_probs[:, :num_words]

  def _run(self, group: tuple[int, int, float],
           jobs: Sequence[_Job]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One generator call for the jobs' rows, padded to a batch size; each job's rows back."""
    num_words, top_k, top_p = group
    rows = sum(len(job.temperatures) for job in jobs)
    size = next(s for s in self.limits.batch_sizes if s >= rows)
    generated = sampling.generate(
        self.model, self.params, _stack([j.prompts for j in jobs], size, 0),
        _stack([j.keys for j in jobs], size, 0), num_words,
        _stack([j.temperatures for j in jobs], size, 1.0),
        sampling.Decoding(self.mode, top_k, top_p, unknown_id=self.tokenizer.unknown_id))
    ends = np.cumsum([len(job.temperatures) for job in jobs])
    return list(zip(np.split(np.asarray(generated.tokens)[:rows], ends[:-1]),
                    np.split(np.asarray(generated.log_probs)[:rows], ends[:-1])))


def _stack(arrays: Sequence[np.ndarray], size: int, fill: float) -> np.ndarray:
  """The arrays one after another along axis 0, then rows of `fill` up to `size` rows."""
  rows = sum(len(a) for a in arrays)
  return np.concatenate([*arrays, np.full((size - rows, *arrays[0].shape[1:]), fill,
                                          arrays[0].dtype)])


def _with_rng_seed(settings: Settings) -> Settings:
  if settings.rng_seed is not None:
    return settings
  return dataclasses.replace(settings, rng_seed=_fresh_seed())


def _fresh_seed() -> int:
  return secrets.randbelow(MAX_RNG_SEED + 1)


def _checkpoint_step(workdir: str | Path, which: str) -> int | None:
  manager = checkpoints.manager(workdir)
  try:
    return manager.best_step() if which == 'best' else manager.latest_step()
  finally:
    manager.close()
