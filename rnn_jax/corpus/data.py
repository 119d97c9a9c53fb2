"""Texts in, windows of token ids out: tokenizing, splitting and batching (files.py reads them)."""

import collections
import dataclasses
from typing import Iterator

import numpy as np

from rnn_jax.configs import Config, DataConfig
from rnn_jax.corpus import files
from rnn_jax.corpus import overlap
from rnn_jax.corpus import text
from rnn_jax.errors import UserError

UNKNOWN = '<unk>'  # the unknown-word token (id 1) of a vocabulary fitted with a min_count

@dataclasses.dataclass(frozen=True)
class Windows:
  """Windows of `length` tokens, each labelled with the token that follows it.

  The windows are strided views of `tokens`, so 300k of them cost no more memory than the text.
  """
  tokens: np.ndarray  # int32[num_tokens]: the kept texts end to end
  starts: np.ndarray  # int32[num_windows] (int64 past 2**31 tokens): where each window begins
  length: int  # tokens per window

  def __len__(self) -> int:
    return len(self.starts)

  def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns features: int32[n, length] and labels: int32[n] of the windows at `indices`."""
    if not len(indices):  # the texts may be shorter than one window
      return np.zeros((0, self.length), np.int32), np.zeros(0, np.int32)
    rows = np.lib.stride_tricks.sliding_window_view(self.tokens, self.length + 1)
    rows = rows[self.starts[indices]]
    # Contiguous, so that handing them to jax costs one plain copy.
    return np.ascontiguousarray(rows[:, :-1]), rows[:, -1]

  @property
  def labels(self) -> np.ndarray:
    """int32[num_windows]: the token after each window."""
    return self.tokens[self.starts + self.length]

  def subset(self, indices: np.ndarray) -> 'Windows':
    return dataclasses.replace(self, starts=self.starts[indices])


def make_windows(sequences: list[list[int]] | list[np.ndarray], length: int) -> Windows:
  """Every window of `length` tokens inside each sequence, in order (no window spans two).

  A single int32 sequence is kept as it is, not copied; the starts, one per token of a long text,
  are int32 where they fit.
  """
  lengths = np.array([len(s) for s in sequences], dtype=np.int64)
  counts = np.maximum(lengths - length, 0)
  starts = np.arange(counts.sum(), dtype=np.int32 if lengths.sum() < 2**31 else np.int64)
  if len(sequences) == 1:
    return Windows(tokens=np.asarray(sequences[0], np.int32), starts=starts, length=length)
  first_window = np.cumsum(counts) - counts
  # Window i of text t starts at offset(t) + i - first_window(t).
  starts += np.repeat((np.cumsum(lengths) - lengths - first_window).astype(starts.dtype), counts)
  tokens = np.concatenate([np.asarray(s, np.int32) for s in sequences] or [np.zeros(0, np.int32)])
  return Windows(tokens=tokens, starts=starts, length=length)


@dataclasses.dataclass(frozen=True)
class Chunks:
  """Texts cut into pieces of `length` tokens, each labelled with the next token at every position.

  The every-position objective's training data: each word of a text (but its first) is a label
  once per epoch, with 50 labels per forward pass instead of one. A text's last piece is short:
  positions past its end hold 0, which is never a label and so weighs nothing.
  """
  tokens: np.ndarray  # int32[num_tokens + length + 1]: the texts end to end, then padding
  starts: np.ndarray  # int64[num_chunks]: where each piece begins in `tokens`
  ends: np.ndarray  # int64[num_chunks]: where the text of each piece ends in `tokens`
  length: int  # tokens per piece

  def __len__(self) -> int:
    return len(self.starts)

  def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns features: int32[n, length] and labels: int32[n, length] (0 past a text's end)."""
    rows = np.lib.stride_tricks.sliding_window_view(self.tokens, self.length + 1)
    starts = self.starts[indices]
    inside = starts[:, None] + np.arange(self.length + 1) < self.ends[indices][:, None]
    rows = np.where(inside, rows[starts], 0).astype(np.int32)
    return rows[:, :-1], rows[:, 1:]


def make_chunks(sequences: list[list[int]], length: int) -> Chunks:
  """Every text cut into consecutive pieces of `length` tokens (and one label each)."""
  lengths = np.array([len(s) for s in sequences], dtype=np.int64)
  counts = np.maximum(lengths - 2, -1) // length + 1  # pieces that hold at least one label
  offsets = np.cumsum(lengths) - lengths
  first_piece = np.cumsum(counts) - counts
  piece = np.arange(counts.sum()) - np.repeat(first_piece, counts)
  tokens = np.concatenate([np.asarray(s, np.int32) for s in sequences]
                          + [np.zeros(length + 1, np.int32)])
  return Chunks(tokens=tokens, starts=np.repeat(offsets, counts) + piece * length,
                ends=np.repeat(offsets + lengths, counts), length=length)


@dataclasses.dataclass(frozen=True)
class Dataset:
  tokenizer: text.Tokenizer
  num_texts: int  # documents read
  num_kept_texts: int  # documents long enough to keep
  train: Windows
  valid: Windows
  test: Windows  # empty when the fractions leave nothing for it
  valid_texts: list[np.ndarray]  # token ids of the validation texts (every kept text for 'windows')
  train_texts: list[np.ndarray] | None  # token ids of the training texts; None for 'windows'
  duplicate_texts: int  # kept texts that repeat an earlier one word for word
  near_copy_groups: list[list[int]]  # each group of near-copies, as indices among distinct texts
  # With a given tokenizer: each word of the texts it has no id for, and how often it occurs,
  # most frequent first (read as the unknown word, or dropped where the tokenizer has none).
  outside_vocabulary: dict[str, int] = dataclasses.field(default_factory=dict)

  def summary(self) -> dict[str, int | float]:
    """The figures `prepare` prints: sizes, copies, and each set's share of unknown labels."""
    unknown = self.tokenizer.word_index.get(self.tokenizer.oov_token)
    return dict(num_words=self.tokenizer.vocab_size, num_texts=self.num_texts,
                num_kept_texts=self.num_kept_texts,
                num_windows=len(self.train) + len(self.valid) + len(self.test),
                num_train=len(self.train), num_valid=len(self.valid), num_test=len(self.test),
                duplicate_texts=self.duplicate_texts,
                near_copy_groups=len(self.near_copy_groups),
                near_copy_texts=sum(map(len, self.near_copy_groups))) | {
                    f'unknown_{name}': round(float(np.mean(windows.labels == unknown)), 4)
                    for name, windows in (('train', self.train), ('valid', self.valid),
                                          ('test', self.test)) if len(windows)} | (
                    {'outside_vocabulary_words': len(self.outside_vocabulary),
                     'outside_vocabulary_tokens': sum(self.outside_vocabulary.values())}
                    if self.outside_vocabulary else {})


def load_texts(config: DataConfig) -> list[str]:
  """The documents, cleaned for the tokenizer (`text.clean`); a stream is one, in pieces."""
  char_level = config.level == 'char'
  texts = files.read_texts(config.data or files.patents_path(), config.text_column,
                           config.txt_mode)
  if config.txt_mode == 'stream':
    return list(files.stream_pieces(texts[0], char_level))
  return [text.clean(t, char_level) for t in texts]


def fit_tokenizer(config: DataConfig, texts: list[str]) -> text.Tokenizer:
  """Every word of `texts`; with min_count 0, the run's own tokenizer (the walkthrough's)."""
  tokenizer = text.Tokenizer(num_words=None if config.min_count else config.num_words or None,
                             filters=config.filters, lower=config.lower,
                             char_level=config.level == 'char')
  tokenizer.fit_on_texts(texts)
  return tokenizer


def fit_vocabulary(config: DataConfig, every_word: text.Tokenizer,
                   sequences: list[np.ndarray]) -> tuple[text.Tokenizer, np.ndarray]:
  """The run's tokenizer, fitted on `sequences` (ids of `every_word`) with the unknown-word
  token, and int32[every_word.vocab_size]: the run's id for each of `every_word`'s."""
  ids = np.concatenate(sequences)
  counts = np.bincount(ids, minlength=every_word.vocab_size)
  seen, first = np.unique(ids, return_index=True)
  tokenizer = text.Tokenizer(num_words=config.num_words or None, filters=config.filters,
                             lower=config.lower, char_level=config.level == 'char',
                             oov_token=UNKNOWN, min_count=config.min_count)
  # In first-seen order, so that ties rank as fitting on the texts themselves would rank them.
  tokenizer.fit_on_counts({every_word.index_word[i]: int(counts[i])
                           for i in seen[np.argsort(first)].tolist()}, len(sequences))
  table = [0] + [tokenizer.id_of(every_word.index_word[i]) for i in range(1, len(counts))]
  return tokenizer, np.asarray(table, np.int32)


def prepare(config: Config, tokenizer: text.Tokenizer | None = None) -> Dataset:
  """Reads, cleans and tokenizes the texts, then splits them into window sets.

  `tokenizer`: a trained model's, to read the texts with instead of fitting one to them (the
  data config's tokenizer fields must be those it was fitted with).
  """
  data_config = config.data
  stream = data_config.txt_mode == 'stream'
  texts = load_texts(data_config)
  given = tokenizer is not None
  outside = outside_vocabulary(tokenizer, texts) if given else {}
  tokenizer = tokenizer if given else fit_tokenizer(data_config, texts)
  all_sequences = _token_ids(tokenizer, texts, stream)
  num_texts = len(all_sequences)
  del texts  # a long stream's text is no longer needed: its ids are
  min_words = data_config.training_length + data_config.min_extra_words
  sequences = [s for s in all_sequences if len(s) > min_words]
  unit = 'characters' if tokenizer.char_level else 'words'
  if not sequences:
    raise UserError((f'the text has {len(all_sequences[0]):,} {unit}, not' if stream else
                     f'none of the {num_texts} texts has') + f' more than {min_words} {unit} '
                    '(training_length + min_extra_words); use a longer text or lower '
                    '--training_length or --min_extra_words')
  rng = np.random.default_rng(config.seed)
  # Copies are told by every word, before the vocabulary could make two texts alike.
  copies = [] if stream else list(_copies(sequences).values())
  near = (_near_copies([sequences[c[0]] for c in copies], data_config)
          if data_config.split == 'abstracts' and data_config.near_copy_share and not stream
          else [])
  split_parts = _splitter(sequences, copies, near, data_config, rng)
  training = split_parts(sequences)[0]
  if not given and data_config.min_count and sum(map(len, training)):
    tokenizer, new_ids = fit_vocabulary(data_config, tokenizer, training)
    sequences = [new_ids[s] for s in sequences]
  if data_config.split == 'abstracts':
    parts = split_parts(sequences)
    train, valid, test = [make_windows(part, data_config.training_length) for part in parts]
    train_texts, valid_texts = parts[:2]
  else:
    windows = make_windows(sequences, data_config.training_length)
    train, valid, test = [windows.subset(part)
                          for part in _split(len(windows), data_config, rng)]
    train_texts, valid_texts = None, sequences
  duplicates = 0 if stream else len(sequences) - len(copies)
  if not len(train) or not len(valid):
    raise UserError((f'the text\'s {len(sequences[0]):,} {unit} are' if stream else
                     f'{len(sequences)} kept texts ({len(sequences) - duplicates} distinct) are')
                    + ' too few to split into train and validation windows of '
                    f'{data_config.training_length} {unit}; use more data or change the '
                    'fractions')
  _check_vocabulary(tokenizer, data_config)
  return Dataset(tokenizer, num_texts, len(sequences), train, valid, test, valid_texts,
                 train_texts, duplicates, near, outside)


def prepare_run(config: Config, tokenizer: text.Tokenizer) -> Dataset:
  """The data of a saved run, whose tokenizer is `tokenizer`: a fine-tuned run read its data
  with the tokenizer it started from; any other fitted its own, and fits it again the same."""
  return prepare(config, tokenizer if config.train.init_from else None)


def outside_vocabulary(tokenizer: text.Tokenizer, texts: list[str]) -> dict[str, int]:
  """Each token of `texts` that `tokenizer` has no id of its own for, with its count, most
  frequent first."""
  counts = collections.Counter()
  for piece in texts:  # characters are counted in C, not as a list of one-letter strings
    lowered = piece.lower() if tokenizer.lower else piece
    counts.update(lowered if tokenizer.char_level else tokenizer.tokenize(piece))
  return {token: count for token, count in counts.most_common()
          if tokenizer.id_of(token) in (None, tokenizer.unknown_id)}


def _check_vocabulary(tokenizer: text.Tokenizer, config: DataConfig):
  # One word (and perhaps the unknown word): the next word is always that word.
  words = [repr(w) for w, i in tokenizer.word_index.items()
           if i < tokenizer.vocab_size and w != tokenizer.oov_token]
  if len(words) < 2:
    raise UserError(f'the vocabulary holds {len(words)} word(s) {" ".join(words)}: nothing to '
                    'predict; use texts with more words' + (' or a larger --num_words'
                                                           if config.num_words else '')
                    + (' or a lower --min_count' if config.min_count > 1 else ''))


def _token_ids(tokenizer: text.Tokenizer, texts: list[str], stream: bool) -> list[np.ndarray]:
  """int32 ids of each text; of a stream's pieces, end to end in one array."""
  ids = [tokenizer.text_to_ids(t) for t in texts]
  return [np.concatenate(ids)] if stream else ids


def _copies(sequences: list[np.ndarray]) -> dict[bytes, list[int]]:
  """Each distinct text's indices among `sequences`, in first-seen order."""
  copies: dict[bytes, list[int]] = {}
  for index, sequence in enumerate(sequences):
    copies.setdefault(sequence.tobytes(), []).append(index)
  return copies


def _splitter(sequences: list[np.ndarray], copies: list[list[int]], near: list[list[int]],
              config: DataConfig, rng: np.random.Generator):
  """What cuts the texts (or a copy of their ids) into train, validation and test texts.

  Split 'windows' cuts later, windows rather than texts: its first part holds every text, which
  its vocabulary comes from. A stream is cut in three where the fractions say, into views.
  Otherwise the texts are shuffled in groups: the corpus repeats some abstracts word for word,
  and others nearly, and copies of a text stay in one set, as do `near`-copies (groups of
  indices into `copies`, the indices of each distinct text's copies). Training keeps every copy, as the corpus has them;
  validation and test hold each distinct text once.
  """
  if config.split == 'windows':
    return lambda sequences: [sequences]
  if config.txt_mode == 'stream':
    cuts = _cuts(len(sequences[0]), config)
    return lambda sequences: [[part] for part in np.split(sequences[0], cuts)]
  grouped = {i for group in near for i in group}
  groups = [[copies[i] for i in group] for group in near] + [
      [copies[i]] for i in range(len(copies)) if i not in grouped]
  # In order of their first text, so that without near-copies the split is what it was.
  groups.sort(key=lambda group: group[0][0])
  train, valid, test = _split(len(groups), config, rng)
  return lambda sequences: (
      [sequences[i] for g in train for text_copies in groups[g] for i in text_copies],
      [sequences[text_copies[0]] for g in valid for text_copies in groups[g]],
      [sequences[text_copies[0]] for g in test for text_copies in groups[g]])


def leakage(dataset: 'Dataset') -> dict[str, float]:
  """Shares of validation and test windows (features and label) found among training windows,
  compared by hash (`overlap.window_hashes`)."""
  seen = _window_hashes(dataset.train)
  seen.sort()

  def share(windows: Windows) -> float:
    if not len(windows) or not len(seen):
      return 0.0
    hashes = _window_hashes(windows)
    return float(np.mean(seen[np.minimum(np.searchsorted(seen, hashes), len(seen) - 1)]
                         == hashes))

  return {'valid_windows_in_train': round(share(dataset.valid), 4),
          'test_windows_in_train': round(share(dataset.test), 4)}


def _near_copies(distinct: list[np.ndarray], config: DataConfig) -> list[list[int]]:
  windows = make_windows(distinct, config.training_length)
  owner = np.repeat(np.arange(len(distinct)), [len(s) - windows.length for s in distinct])
  return overlap.near_copies(windows.tokens, windows.starts, owner, windows.length,
                             config.near_copy_share)


def _window_hashes(windows: Windows) -> np.ndarray:
  return overlap.window_hashes(windows.tokens, windows.starts, windows.length)


def _split(num_items: int, config: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
  """Shuffled indices of items, cut into train, validation and test parts."""
  return np.split(rng.permutation(num_items), _cuts(num_items, config))


def _cuts(num_items: int, config: DataConfig) -> np.ndarray:
  """Where train ends and where validation ends among `num_items` items."""
  fractions = np.array([config.train_fraction, config.train_fraction + config.valid_fraction])
  # Floored like the walkthrough's cut; the epsilon keeps 0.7 + 0.3 of n at n.
  return np.floor(fractions * num_items + 1e-6).astype(int)


def batches(windows: Windows | Chunks, batch_size: int, *, seed: int | None = None,
            epoch: int = 0, start: int = 0,
            rows: slice = slice(None)) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields (features: int32[batch, length], labels, weights) with labels and weights int32 and
  float32 [batch] for Windows, [batch, length] for Chunks, from the `start`-th batch on.

  Every batch has `batch_size` rows, so one compiled step serves them all: the last one is
  padded with weight-0 rows. Label 0 (padding) weighs 0 too. With a seed, the order is a
  permutation drawn from (seed, epoch) alone, so any epoch's batches can be rebuilt after a
  restart, and a run resumed inside an epoch goes on with the batches it had not done.
  `rows` reads only those rows of each batch: a process's share of a batch split over processes.
  """
  if seed is None:
    order = np.arange(len(windows))
  else:
    order = np.random.default_rng((seed, epoch)).permutation(len(windows))
  for begin in range(start * batch_size, len(order), batch_size):
    indices = order[begin:begin + batch_size]
    real = (np.arange(batch_size) < len(indices))[rows]
    indices = np.pad(indices, (0, batch_size - len(indices)))[rows]
    features, labels = windows.take(indices)
    weights = (labels != 0) & real.reshape(-1, *[1] * (labels.ndim - 1))
    yield features, labels, weights.astype(np.float32)
