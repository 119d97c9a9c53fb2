"""Tests for rnn_jax.corpus.text: hand-worked cases and corpus reference figures."""

import csv
import os
from pathlib import Path

import pytest

from rnn_jax.corpus.text import Tokenizer, format_patent, remove_spaces

WALKTHROUGH_FILTERS = '!"%;[\\]^_`{|}~\t\n'
GLOVE_FILTERS = '!"#$%&()*+/:<=>@[\\]^_`{|}~\t\n'
SEMICOLON_KEPT_FILTERS = '!"%[\\]^_`{|}~\t\n'
CORPUS = 'neural_network_patent_query.csv'


def test_ranks_by_count_then_first_seen():
  tok = Tokenizer()
  tok.fit_on_texts(['b a c', 'c d a', 'a'])
  # a: 3, c: 2, b and d: 1 each (b seen first).
  assert tok.word_counts == {'b': 1, 'a': 3, 'c': 2, 'd': 1}
  assert list(tok.word_counts) == ['b', 'a', 'c', 'd']
  assert tok.word_index == {'a': 1, 'c': 2, 'b': 3, 'd': 4}
  assert tok.index_word == {1: 'a', 2: 'c', 3: 'b', 4: 'd'}
  assert tok.document_count == 3
  assert tok.vocab_size == 5
  assert tok.texts_to_sequences(['d c b a', 'zzz a']) == [[4, 2, 3, 1], [1]]
  assert tok.sequences_to_texts([[4, 2, 3, 1], [0, 9, 1]]) == ['d c b a', 'a']


def test_filters_become_separators():
  assert Tokenizer().tokenize('a;b  c') == ['a', 'b', 'c']
  assert Tokenizer(filters='').tokenize('a;b  c') == ['a;b', 'c']
  assert Tokenizer(filters=',').tokenize('x,,y;z') == ['x', 'y;z']


def test_lower():
  assert Tokenizer().tokenize('The CAT') == ['the', 'cat']
  assert Tokenizer(lower=False).tokenize('The CAT') == ['The', 'CAT']


def test_split_on_other_character():
  tok = Tokenizer(split='|', filters=',')
  # Filters turn into the split character; spaces stay inside words.
  assert tok.tokenize('a b|c,d||e') == ['a b', 'c', 'd', 'e']


def test_num_words_limits_sequences_not_word_index():
  tok = Tokenizer(num_words=3)
  tok.fit_on_texts(['a a a b b c'])
  assert tok.word_index == {'a': 1, 'b': 2, 'c': 3}
  assert tok.vocab_size == 3
  assert tok.texts_to_sequences(['c b a x']) == [[2, 1]]
  assert tok.sequences_to_texts([[3, 2, 1]]) == ['b a']
  # A limit above the vocabulary does not grow it.
  big = Tokenizer(num_words=100)
  big.fit_on_texts(['a b'])
  assert big.vocab_size == 3


def test_oov_token():
  tok = Tokenizer(oov_token='<unk>')
  tok.fit_on_texts(['x y y'])
  assert tok.word_index == {'<unk>': 1, 'y': 2, 'x': 3}
  assert tok.vocab_size == 4
  assert tok.texts_to_sequences(['y z x']) == [[2, 1, 3]]
  assert tok.sequences_to_texts([[2, 1, 3, 7]]) == ['y <unk> x <unk>']


def test_oov_token_with_num_words():
  tok = Tokenizer(num_words=3, oov_token='<unk>')
  tok.fit_on_texts(['x y y w w w'])
  assert tok.word_index == {'<unk>': 1, 'w': 2, 'y': 3, 'x': 4}
  # Only ids 1 and 2 survive; the oov token takes one of the slots.
  assert tok.texts_to_sequences(['w y x q']) == [[2, 1, 1, 1]]
  assert tok.sequences_to_texts([[2, 3, 4]]) == ['w <unk> <unk>']
  assert tok.vocab_size == 3


def test_oov_token_occurring_as_word_keeps_index_1():
  tok = Tokenizer(oov_token='unk')
  tok.fit_on_texts(['a unk unk'])
  assert tok.word_index == {'unk': 1, 'a': 2}


def test_char_level_ignores_filters_and_lowers():
  tok = Tokenizer(char_level=True)
  tok.fit_on_texts(['Ab, b'])
  assert tok.word_counts == {'a': 1, 'b': 2, ',': 1, ' ': 1}
  assert tok.word_index == {'b': 1, 'a': 2, ',': 3, ' ': 4}
  assert tok.texts_to_sequences(['ba!']) == [[1, 2]]
  assert tok.sequences_to_texts([[1, 2, 3]]) == ['b a ,']
  assert Tokenizer(char_level=True, lower=False).tokenize('Ab') == ['A', 'b']


def test_fitting_twice_accumulates_and_reranks():
  tok = Tokenizer()
  tok.fit_on_texts(['a a b'])
  assert tok.word_index == {'a': 1, 'b': 2}
  tok.fit_on_texts(['b b c'])
  assert tok.word_counts == {'a': 2, 'b': 3, 'c': 1}
  assert tok.word_index == {'b': 1, 'a': 2, 'c': 3}
  assert tok.document_count == 2


def test_json_round_trip():
  tok = Tokenizer(num_words=4, filters='!', lower=False, oov_token='<oov>')
  texts = ['say "hi" naïve café', 'zebra zebra apple café say', 'x "hi"!']
  tok.fit_on_texts(texts)
  restored = Tokenizer.from_json(tok.to_json())
  assert isinstance(restored, Tokenizer)
  assert list(restored.word_index.items()) == list(tok.word_index.items())
  assert restored.index_word == tok.index_word
  assert list(restored.word_counts.items()) == list(tok.word_counts.items())
  assert restored.document_count == 3
  assert (restored.num_words, restored.filters, restored.lower,
          restored.oov_token) == (4, '!', False, '<oov>')
  assert restored.texts_to_sequences(texts) == tok.texts_to_sequences(texts)
  # Count-2 words in first-seen order, then count-1 words.
  assert list(tok.word_index) == [
      '<oov>', 'say', '"hi"', 'café', 'zebra', 'naïve', 'apple', 'x']
  assert restored.texts_to_sequences(['say "hi" café']) == [[2, 3, 1]]


def test_format_patent_and_remove_spaces():
  text = 'a neural network, (12) comprising layers.'
  # Space before ',' and '.', then "(12)" goes and leaves ",  comprising".
  formatted = format_patent(text)
  assert formatted == 'a neural network , comprising layers .'
  assert remove_spaces(formatted) == text.replace(' (12)', '')
  assert format_patent('a gain of 3.5 dB.') == 'a gain of 3.5 dB .'
  assert format_patent('why? (3) yes; no') == 'why ? yes ; no'
  # Pairs of whitespace collapse once, without overlap: 3 spaces -> 2.
  assert format_patent('x   y') == 'x  y'
  assert remove_spaces('a ,  b \n; c  ?') == 'a,  b; c?'


def _data_dir() -> Path:
  env = os.environ.get('RNN_JAX_DATA_DIR')
  if env:
    return Path(os.path.abspath(env))
  return Path(__file__).parents[1] / '..' / 'shared' / 'data'


@pytest.fixture(scope='module')
def abstracts() -> list[str]:
  path = _data_dir() / CORPUS
  if not path.is_file():
    pytest.skip(f'{path} is absent (set RNN_JAX_DATA_DIR to its folder)')
  with open(path, newline='', encoding='utf-8') as f:
    return [format_patent(row['patent_abstract']) for row in csv.DictReader(f)]


@pytest.mark.parametrize(
    'filters, lower, training_length, vocab_size, kept, windows', [
        (WALKTHROUGH_FILTERS, False, 50, 16_192, 3_255, 318_563),
        (GLOVE_FILTERS, True, 50, 13_677, 3_259, 320_881),
        (SEMICOLON_KEPT_FILTERS, False, 20, 16_210, 3_483, 426_028),
        (WALKTHROUGH_FILTERS, False, 100, 16_192, 2_228, 158_579),
    ])
def test_corpus_reference_figures(abstracts, filters, lower, training_length,
                                  vocab_size, kept, windows):
  tok = Tokenizer(filters=filters, lower=lower)
  tok.fit_on_texts(abstracts)
  sequences = tok.texts_to_sequences(abstracts)
  long_enough = [s for s in sequences if len(s) > training_length + 20]
  assert tok.vocab_size == vocab_size
  assert len(long_enough) == kept
  assert sum(len(s) - training_length for s in long_enough) == windows
