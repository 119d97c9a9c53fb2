"""Tests for rnn_jax.corpus.seeds: the user's text, random corpus passages, padding and display."""

import numpy as np
import pytest

from rnn_jax.configs import WALKTHROUGH_FILTERS
from rnn_jax.corpus import seeds
from rnn_jax.corpus.text import Tokenizer
from rnn_jax.errors import UserError

TEXTS = ['the cat sat on the mat .', 'the dog sat , the cat ran .', 'a dog ran on the mat .']


def fitted(**kwargs) -> Tokenizer:
  """Keeps `.` and `,` as words, as the walkthrough's filters do."""
  tokenizer = Tokenizer(filters=WALKTHROUGH_FILTERS, **kwargs)
  tokenizer.fit_on_texts(TEXTS)
  return tokenizer


def ids(tokenizer: Tokenizer, words: str) -> list[int]:
  return [tokenizer.word_index[w] for w in words.split()]


def test_from_text_cleans_as_the_training_texts():
  tokenizer = fitted()
  # format_patent splits "mat." and drops the figure reference "(12)"; the tokenizer lowers.
  seed = seeds.from_text('The cat (12) sat on the mat.', tokenizer)
  assert seed.tokens == ids(tokenizer, 'the cat sat on the mat .')
  assert seed.unknown == [] and seed.actual is None


def test_from_text_reports_unknown_words_once_in_order_and_drops_them():
  tokenizer = fitted()
  seed = seeds.from_text('the zebra cat Zebra yak sat', tokenizer)
  assert seed.tokens == ids(tokenizer, 'the cat sat')
  assert seed.unknown == ['zebra', 'yak']


def test_from_text_leaves_unknown_words_out_also_with_an_oov_token():
  tokenizer = fitted(oov_token='<oov>')
  assert tokenizer.word_index['<oov>'] == 1
  seed = seeds.from_text('the zebra cat yak', tokenizer)
  # The model reads what the user typed and it knows, as it writes only words it knows.
  assert seed.tokens == [tokenizer.word_index['the'], tokenizer.word_index['cat']]
  assert seed.unknown == ['zebra', 'yak']
  with pytest.raises(UserError, match='leaves no word to start from'):
    seeds.from_text('zebra yak', tokenizer)


def test_from_text_reports_words_outside_num_words():
  tokenizer = fitted(num_words=3)  # keeps ids 1 and 2: 'the' and then the next most frequent
  kept = tokenizer.index_word[2]
  seed = seeds.from_text(f'the {kept} dog', tokenizer)
  assert seed.tokens == [1, 2]
  assert seed.unknown == ['dog']


def test_a_seed_without_known_words_raises_naming_them():
  with pytest.raises(UserError, match='zebra, yak'):
    seeds.from_text('zebra yak zebra', fitted())


@pytest.mark.parametrize('seed_text', ['', '   ', '(12)'])
def test_an_empty_seed_raises(seed_text):
  with pytest.raises(UserError):
    seeds.from_text(seed_text, fitted())


def test_pad_keeps_the_last_ids_and_left_pads_with_zero():
  padded = seeds.pad([[1, 2, 3], [4], [5, 6, 7, 8, 9], [], (10, 11, 12, 13)], 4)
  expected = [[0, 1, 2, 3], [0, 0, 0, 4], [6, 7, 8, 9], [0, 0, 0, 0], [10, 11, 12, 13]]
  np.testing.assert_array_equal(padded, expected)
  assert padded.dtype == np.int32 and padded.shape == (5, 4)


# Every token is unique over the corpus, so a seed tells which text and start it came from.
LENGTH, NUM_WORDS = 5, 12
CORPUS = [list(range(1000 * i + 1, 1000 * i + 1 + n)) for i, n in enumerate([14, 25, 40, 60])]


def test_random_passages_are_windows_of_the_texts_with_what_follows():
  passages = seeds.random_passages(CORPUS, LENGTH, 3000, NUM_WORDS, np.random.default_rng(0))
  assert len(passages) == 3000
  starts = {i: set() for i in range(len(CORPUS))}
  for passage in passages:
    text_index, start = divmod(passage.tokens[0] - 1, 1000)
    text = CORPUS[text_index]
    assert 0 <= start <= len(text) - LENGTH - seeds.MIN_ACTUAL_WORDS
    assert passage.tokens == text[start:start + LENGTH]
    assert passage.actual == text[start + LENGTH:start + LENGTH + NUM_WORDS]
    assert seeds.MIN_ACTUAL_WORDS <= len(passage.actual) <= NUM_WORDS
    assert passage.unknown == []
    starts[text_index].add(start)
  assert not starts[0]  # 14 words hold no 5-word seed with 10 words after it
  for i in (1, 2, 3):  # every allowed start is drawn, the last included
    assert starts[i] == set(range(len(CORPUS[i]) - LENGTH - seeds.MIN_ACTUAL_WORDS + 1))


def test_random_passages_depend_only_on_the_rng_seed():
  draw = lambda seed: seeds.random_passages(CORPUS, LENGTH, 20, NUM_WORDS,
                                            np.random.default_rng(seed))
  assert draw(3) == draw(3)
  assert draw(3) != draw(4)


def test_random_passages_from_texts_too_short_raise():
  with pytest.raises(UserError):
    seeds.random_passages([list(range(1, 15)), [1, 2]], LENGTH, 3, NUM_WORDS,
                          np.random.default_rng(0))


def test_show_glues_punctuation_back():
  tokenizer = fitted()
  assert seeds.show(tokenizer, ids(tokenizer, 'the cat . the dog , ran')) == 'the cat. the dog, ran'
  assert seeds.show(tokenizer, np.array(ids(tokenizer, 'a dog .'))) == 'a dog.'
