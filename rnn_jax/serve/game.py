"""The walkthrough's human-or-machine game: which of three continuations did a person write?"""

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from rnn_jax.corpus import seeds
from rnn_jax.corpus import text
from rnn_jax.generation import sampling

CHOICES = 3  # two generated continuations and the real one
TEMPERATURES = (0.5, 1.25)  # each generated continuation's temperature is drawn from this range


@dataclasses.dataclass(frozen=True)
class Round:
  seed: str  # the passage all three continue
  continuations: tuple[str, ...]  # in the order shown
  temperatures: tuple[float | None, ...]  # of each continuation; None marks the person's

  @property
  def human(self) -> int:
    """Index of the real continuation."""
    return self.temperatures.index(None)


def make_rounds(model: Any, params: Any, tokenizer: text.Tokenizer,
                texts: Sequence[Sequence[int]], training_length: int, count: int, num_words: int,
                rng_seed: int, decoding: sampling.Decoding = sampling.Decoding()) -> list[Round]:
  """`count` rounds on random passages of `texts`, all generated in one batched call.

  The generated continuations are cut to the real one's length, which can be shorter than
  `num_words` near the end of a text, so length gives nothing away.
  """
  rng = np.random.default_rng(rng_seed)
  passages = seeds.random_passages(texts, training_length, count, num_words, rng)
  machines = CHOICES - 1
  temperatures = rng.uniform(*TEMPERATURES, size=(count, machines))
  generated = sampling.continue_seeds(model, params, passages, training_length,
                                      jax.random.key(rng_seed), num_words,
                                      temperatures.ravel(), decoding, num_samples=machines)
  tokens = np.asarray(generated.tokens).reshape(count, machines, num_words)
  return [arrange(tokenizer, passage, own_tokens, own_temperatures, rng)
          for passage, own_tokens, own_temperatures in zip(passages, tokens, temperatures)]


def arrange(tokenizer: text.Tokenizer, passage: seeds.Seed, generated: np.ndarray,
            temperatures: Sequence[float], rng: np.random.Generator) -> Round:
  """The round of a passage and its CHOICES - 1 generated continuations, in an order from rng.

  Args:
    tokenizer: the run's tokenizer, to show the texts.
    passage: a random passage with its real continuation (`seeds.random_passages`).
    generated: int32[CHOICES - 1, num_words], cut here to the real continuation's length.
    temperatures: the temperature of each generated continuation.
    rng: draws the order the three are shown in.
  """
  length = len(passage.actual)
  options = [(seeds.show(tokenizer, t[:length]), float(temperature))
             for t, temperature in zip(generated, temperatures)]
  options.append((seeds.show(tokenizer, passage.actual), None))
  shown = [options[i] for i in rng.permutation(CHOICES)]
  return Round(seeds.show(tokenizer, passage.tokens), *map(tuple, zip(*shown)))


def play(rounds: Sequence[Round], answers: Iterator[str], say: Callable[[str], None]) -> int:
  """Plays the rounds, reading one answer per line; returns the number answered correctly.

  An answer other than 1-3 is asked again; running out of answers ends the game with the score.
  """
  score = played = 0
  for number, game_round in enumerate(rounds, 1):
    say(f'\nRound {number} of {len(rounds)}. The passage:\n  {game_round.seed}\n')
    for option, continuation in enumerate(game_round.continuations, 1):
      say(f'{option}: ... {continuation}\n')
    choice = _ask(answers, say)
    if choice is None:
      break
    played += 1
    correct = choice == game_round.human
    score += correct
    say(('Correct!' if correct else 'Incorrect.') + ' ' + _authors(game_round) + '\n')
    say(f'Score: {score}/{played}\n')
  say(f'\nFinal score: {score} of {played} round{"s" * (played != 1)}.\n')
  return score


def _ask(answers: Iterator[str], say: Callable[[str], None]) -> int | None:
  """The chosen index, or None once the answers run out."""
  while True:
    say(f'Which one did a person write? [1-{CHOICES}]: ')
    answer = next(answers, None)
    if answer is None:
      say('\n')
      return None
    if answer.strip() in [str(i) for i in range(1, CHOICES + 1)]:
      return int(answer) - 1
    say(f'Please answer with a number from 1 to {CHOICES}.\n')


def _authors(game_round: Round) -> str:
  return '  '.join(f'{i}: ' + ('human' if t is None else f'machine (diversity {t:.2f})')
                   for i, t in enumerate(game_round.temperatures, 1))
