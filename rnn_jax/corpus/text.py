"""Text clean-up and a word tokenizer with Keras `Tokenizer` semantics.

The walkthrough this project reproduces cleaned patent abstracts with
`format_patent` and tokenized them with `keras.preprocessing.text.Tokenizer`;
`Tokenizer` here gives the same ids so that its reference figures still hold.
"""

import collections
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'

# Punctuation glued to a non-digit ("word." but not "3.5").
_PUNCT_AFTER_WORD = re.compile(r'(?<=[^\s0-9])(?=[.,;?])')
_FIGURE_REFERENCE = re.compile(r'\((\d+)\)')
_TWO_SPACES = re.compile(r'\s\s')
_SPACED_PUNCT = re.compile(r'\s+([.,;?])')


def format_patent(text: str) -> str:
  """Cleans an abstract the walkthrough's way.

  Puts a space before `.,;?` glued to a non-digit (so punctuation becomes its
  own token), drops figure references such as "(12)", then replaces each
  non-overlapping pair of whitespace characters with one space (which closes
  the gap a dropped reference leaves).
  """
  text = _PUNCT_AFTER_WORD.sub(' ', text)
  text = _FIGURE_REFERENCE.sub('', text)
  return _TWO_SPACES.sub(' ', text)


def clean(text: str, char_level: bool) -> str:
  """What the tokenizer reads of a text: the walkthrough's clean-up for words, or the text as
  written for characters (its spacing and figure references are characters to learn too)."""
  return text if char_level else format_patent(text)


def remove_spaces(text: str) -> str:
  """For display: glues `.,;?` back onto the preceding word."""
  return _SPACED_PUNCT.sub(r'\1', text)


class Tokenizer:
  """Maps words to integer ids ranked by frequency, as Keras' `Tokenizer`.

  Id 0 is reserved for padding and is never a word. If `oov_token` is set it
  has id 1 and stands for every word that is unknown or outside `num_words`.
  Words follow by count, most frequent first, ties in first-seen order.

  Attributes:
    word_counts: word -> count over every fitted text, in first-seen order.
    document_count: number of fitted texts.
    word_index: word -> id, for every fitted word counted at least `min_count`
      times (`num_words` does not trim it; it only limits which ids sequences
      contain).
    index_word: id -> word, the inverse of `word_index`.
  """

  def __init__(self,
               *,
               num_words: int | None = None,
               filters: str = KERAS_FILTERS,
               lower: bool = True,
               split: str = ' ',
               char_level: bool = False,
               oov_token: str | None = None,
               min_count: int = 1):
    """Sets up an empty tokenizer.

    Args:
      num_words: sequences keep only ids < num_words (so the num_words - 1
        most frequent entries, the oov token counting as one); None or 0
        (as in Keras) keep every id.
      filters: characters turned into `split` before splitting (word level).
      lower: lower-case texts before tokenizing.
      split: separator between words.
      char_level: every character is a token; `filters` are not applied
        (as in Keras).
      oov_token: token for unknown words; None drops them instead.
      min_count: words counted fewer times get no id of their own (not a
        Keras option): they are unknown words.
    """
    if num_words is not None and num_words < 0:
      raise ValueError(f'num_words must be >= 0 or None, got {num_words}')
    if min_count < 1:
      raise ValueError(f'min_count must be >= 1, got {min_count}')
    self.num_words = num_words or None
    self.filters = filters
    self.lower = lower
    self.split = split
    self.char_level = char_level
    self.oov_token = oov_token
    self.min_count = min_count
    self._filter_table = str.maketrans({c: split for c in filters})
    self.word_counts: dict[str, int] = {}
    self.document_count = 0
    self.word_index: dict[str, int] = {}
    self.index_word: dict[int, str] = {}
    self._char_table: np.ndarray | None = None

  def tokenize(self, text: str) -> list[str]:
    """Splits one text into tokens (Keras' `text_to_word_sequence`)."""
    if self.lower:
      text = text.lower()
    if self.char_level:
      return list(text)
    words = text.translate(self._filter_table).split(self.split)
    return [w for w in words if w]

  def fit_on_texts(self, texts: Iterable[str]):
    """Adds the texts' words to the counts and re-ranks every word."""
    for text in texts:
      self.document_count += 1
      # Counted in C, in first-seen order: a text's new words join word_counts in that order.
      for word, count in collections.Counter(self.tokenize(text)).items():
        self.word_counts[word] = self.word_counts.get(word, 0) + count
    self._rank()

  def fit_on_counts(self, word_counts: dict[str, int], document_count: int):
    """Adds counts made elsewhere (word -> count, in first-seen order) and re-ranks."""
    self.document_count += document_count
    for word, count in word_counts.items():
      self.word_counts[word] = self.word_counts.get(word, 0) + count
    self._rank()

  def _rank(self):
    """Builds `word_index` and `index_word` from `word_counts`."""
    # sorted() is stable also with reverse=True: ties stay in first-seen order.
    ranked = sorted(self.word_counts, key=self.word_counts.__getitem__,
                    reverse=True)
    vocab = [] if self.oov_token is None else [self.oov_token]
    # An oov token that also occurs as a word keeps id 1 (Keras would move it
    # to the word's rank and leave id 1 without a word).
    vocab += [w for w in ranked
              if w != self.oov_token and self.word_counts[w] >= self.min_count]
    self.word_index = {w: i for i, w in enumerate(vocab, start=1)}
    self.index_word = {i: w for w, i in self.word_index.items()}
    self._char_table = None  # built on first use by text_to_ids

  @property
  def vocab_size(self) -> int:
    """Number of ids a sequence can hold, padding id 0 included."""
    size = len(self.word_index) + 1
    return size if self.num_words is None else min(size, self.num_words)

  @property
  def unknown_id(self) -> int:
    """The oov token's id; 0 (padding, never a word) when there is none."""
    return self.word_index.get(self.oov_token, 0)

  def _keeps(self, index: int) -> bool:
    return self.num_words is None or index < self.num_words

  def _own_id(self, word: str) -> int | None:
    """The word's id if it is known and within num_words, else None."""
    index = self.word_index.get(word)
    return index if index is not None and self._keeps(index) else None

  def id_of(self, word: str) -> int | None:
    """The id a sequence holds for `word`: its own, else the oov id, else None (dropped)."""
    own = self._own_id(word)
    return self.word_index.get(self.oov_token) if own is None else own

  def texts_to_sequences(self, texts: Iterable[str]) -> list[list[int]]:
    """Maps each text to its list of ids.

    Unknown words and ids >= num_words become the oov id when `oov_token` is
    set and are dropped otherwise, so a sequence can be shorter than its text.
    """
    sequences = []
    for text in texts:
      ids = (self.id_of(w) for w in self.tokenize(text))
      sequences.append([i for i in ids if i is not None])
    return sequences

  def text_to_ids(self, text: str) -> np.ndarray:
    """int32[num_tokens]: the ids `texts_to_sequences` gives one text.

    At char level without a Python object per character: a long text costs a few times its
    size in memory, not a hundred.
    """
    if not self.char_level:
      return np.asarray(self.texts_to_sequences([text])[0], np.int32)
    if self.lower:
      text = text.lower()
    # surrogatepass: text from the command line can hold lone surrogates; they are unknown.
    codes = np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32)
    table = self._char_ids()
    ids = table[np.minimum(codes, len(table) - 1)]
    return ids[ids >= 0]

  def _char_ids(self) -> np.ndarray:
    """int32[highest code point + 2]: by code point, the character's id, else the oov id or -1
    (dropped); the last entry stands for every code point above the others."""
    if self._char_table is None:
      oov = self.word_index.get(self.oov_token, -1)
      chars = [w for w in self.word_index if len(w) == 1]
      table = np.full(max(map(ord, chars), default=0) + 2, oov, np.int32)
      for char in chars:
        own = self._own_id(char)
        table[ord(char)] = oov if own is None else own
      self._char_table = table
    return self._char_table

  def unknown_words(self, text: str) -> list[str]:
    """Words of `text` without an id of their own (dropped, or read as the oov token), once each."""
    return list(dict.fromkeys(w for w in self.tokenize(text) if self._own_id(w) is None))

  def tokens_of(self, sequence: Sequence[int]) -> list[str]:
    """The tokens of one id sequence.

    Ids that are unknown or >= num_words become the oov token when it is set
    and are skipped otherwise.
    """
    words = (self.index_word.get(i) if self._keeps(i) else None for i in sequence)
    words = (self.oov_token if w is None else w for w in words)
    return [w for w in words if w is not None]

  def sequences_to_texts(self, sequences: Iterable[Sequence[int]]) -> list[str]:
    """Maps each id sequence back to its tokens (`tokens_of`) joined by single
    spaces, also at char level (as Keras does; `seeds.show` joins characters)."""
    return [' '.join(self.tokens_of(sequence)) for sequence in sequences]

  def to_json(self) -> str:
    """Serializes settings and counts (a JSON object; see `from_json`)."""
    return json.dumps({
        'num_words': self.num_words,
        'filters': self.filters,
        'lower': self.lower,
        'split': self.split,
        'char_level': self.char_level,
        'oov_token': self.oov_token,
        'min_count': self.min_count,
        'document_count': self.document_count,
        # Order matters: ties in the ranking follow it.
        'word_counts': self.word_counts,
    })

  @classmethod
  def from_json(cls, text: str) -> 'Tokenizer':
    """Rebuilds a tokenizer saved by `to_json`, with identical ids."""
    state: dict[str, Any] = json.loads(text)
    tokenizer = cls(num_words=state['num_words'], filters=state['filters'],
                    lower=state['lower'], split=state['split'],
                    char_level=state['char_level'],
                    oov_token=state['oov_token'],
                    # Tokenizers saved before min_count existed kept every word.
                    min_count=state.get('min_count', 1))
    tokenizer.document_count = state['document_count']
    tokenizer.word_counts = dict(state['word_counts'])
    tokenizer._rank()
    return tokenizer
