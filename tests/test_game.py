"""The human-or-machine game: rounds from a trained run, scoring of scripted answers."""

import numpy as np

from rnn_jax import train
from rnn_jax.corpus import data
from rnn_jax.corpus import seeds
from rnn_jax.serve import game


def scripted(rounds, answers: list[str]) -> tuple[int, str]:
  said = []
  score = game.play(rounds, iter(answers), said.append)
  return score, ''.join(said)


ROUNDS = [game.Round('seed one', ('a b', 'c d', 'e f'), (0.7, None, 1.1)),
          game.Round('seed two', ('g h', 'i j', 'k l'), (None, 0.5, 0.9))]


def test_correct_answers_score_and_the_truth_is_shown():
  score, said = scripted(ROUNDS, ['2\n', '3\n'])
  assert score == 1
  assert 'Correct! 1: machine (diversity 0.70)  2: human  3: machine (diversity 1.10)' in said
  assert 'Incorrect. 1: human  2: machine (diversity 0.50)  3: machine (diversity 0.90)' in said
  assert said.endswith('Final score: 1 of 2 rounds.\n')


def test_invalid_answers_are_asked_again():
  score, said = scripted(ROUNDS[:1], ['0\n', 'two\n', '\n', ' 2 \n'])
  assert score == 1
  assert said.count('Please answer with a number from 1 to 3.') == 3
  assert said.endswith('Final score: 1 of 1 round.\n')


def test_end_of_input_ends_the_game_with_the_score():
  score, said = scripted(ROUNDS, ['2\n', 'x\n'])
  assert score == 1
  assert 'Round 2 of 2' in said
  assert said.endswith('Final score: 1 of 1 round.\n')


def test_rounds_show_the_real_continuation_beside_two_generated_ones(trained):
  workdir, _ = trained
  config, tokenizer, model, params = train.load(workdir)
  texts = data.prepare(config).valid_texts
  rounds = game.make_rounds(model, params, tokenizer, texts, config.data.training_length,
                            count=6, num_words=12, rng_seed=3)
  passages = seeds.random_passages(texts, config.data.training_length, 6, 12,
                                   np.random.default_rng(3))
  assert len(rounds) == 6
  for game_round, passage in zip(rounds, passages):
    assert game_round.seed == seeds.show(tokenizer, passage.tokens)
    assert game_round.continuations[game_round.human] == seeds.show(tokenizer, passage.actual)
    machines = [t for t in game_round.temperatures if t is not None]
    assert len(machines) == 2 and all(0.5 <= t <= 1.25 for t in machines)
    assert all(len(c.split()) == len(passage.actual) for c in game_round.continuations)
  assert len({r.human for r in rounds}) > 1  # the real one is not always in the same place
  again = game.make_rounds(model, params, tokenizer, texts, config.data.training_length,
                           count=6, num_words=12, rng_seed=3)
  assert again == rounds

