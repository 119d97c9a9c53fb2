"""Pre-trained word vectors: GloVe and word2vec text files, the embedding matrix of a vocabulary,
cosine neighbours, a 2-D PCA map and the TensorFlow Embedding Projector's TSV files.

A GloVe text file (glove.6B.100d.txt) holds one word per line, then its numbers, space separated:

    the -0.038194 -0.24487 0.72812 ...

A word2vec text file (word2vec's `-binary 0`, gensim's `save_word2vec_format(binary=False)`,
fastText's .vec) starts with a line "count dim"; two integer fields tell it apart.

Files are read line by line, and a line is split into its numbers only when its word is kept:
a vocabulary's matrix from a 400,000-word file (glove.6B.100d's size) takes under a second.
"""

from collections.abc import Container, Iterable, Iterator, Sequence
import dataclasses
import itertools
from pathlib import Path

from absl import logging
import numpy as np

from rnn_jax.corpus import files
from rnn_jax.corpus import text
from rnn_jax.errors import UserError

GLOVE_URL = 'https://nlp.stanford.edu/projects/glove/'  # glove.6B.zip holds glove.6B.100d.txt
MISSING_SHOWN = 10  # the most frequent words without a vector that a coverage report names
PROJECTOR_VECTORS = 'vectors.tsv'
PROJECTOR_METADATA = 'metadata.tsv'


@dataclasses.dataclass(frozen=True)
class Vectors:
  """The vectors read from a file, and what reading it met."""
  words: list[str]  # the kept words, in file order, each once
  matrix: np.ndarray  # f32[len(words), dim]: row i is the vector of words[i]
  lines: int  # vectors in the file, kept or not
  skipped: int  # lines with more fields than a word and dim numbers (words with spaces)
  duplicates: int  # kept words seen again later in the file (their first vector counts)


@dataclasses.dataclass(frozen=True)
class Coverage:
  """How much of a tokenizer's vocabulary a vectors file covers."""
  path: str
  words: int  # vocabulary words: ids 1 to vocab_size - 1
  found: int  # of those, the words with a vector
  token_share: float  # share of the fitted texts' words (counted with repeats) with a vector
  most_frequent_missing: list[tuple[str, int]]  # (word, count) without a vector, commonest first
  vectors: Vectors  # the file's figures (its matrix is the found words')

  @property
  def missing(self) -> int:
    return self.words - self.found

  def summary(self) -> str:
    """One line for a log."""
    missing = ', '.join(f'{word} ({count:,})' for word, count in self.most_frequent_missing)
    return (f'{self.found:,} of {self.words:,} words have a vector in {self.path} '
            f'({self.found / max(self.words, 1):.1%}; {self.token_share:.1%} of the words in the '
            f'texts); {self.missing:,} are zeros; most frequent without one: {missing or "none"}')


def vectors_path(name: str | Path) -> Path:
  """The vectors file `name`: as given or, for a relative name, inside the data dir."""
  path = Path(name).expanduser()
  candidates = [path] if path.is_absolute() else [path, files.data_dir() / path]
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  elsewhere = f' (nor {candidates[1]})' if len(candidates) > 1 else ''
  raise UserError(f'vectors file not found: {path}{elsewhere}; GloVe comes from {GLOVE_URL}: '
                  f'unzip glove.6B.zip into {files.data_dir()}')


def read_vectors(path: str | Path, *, dim: int | None = None,
                 keep: Container[str] | None = None) -> Vectors:
  """Reads a GloVe or word2vec text file, keeping the words in `keep` (every word if None).

  Raises UserError, naming the line, for a line with fewer than dim numbers, a kept word's value
  that is not a finite number, vectors of another width than `dim`, an empty file, a word2vec
  header whose count is not the file's, and a file that is not UTF-8 text. Lines with too many
  fields and repeated words are skipped with a warning that counts them.
  """
  path = Path(path)
  try:
    with open(path, 'rb') as f:
      return _read(path, f, dim, keep)
  except OSError as e:
    raise UserError(f'cannot read vectors file {path}: {e.strerror}') from None


def _read(path: Path, lines: Iterable[bytes], dim: int | None,
          keep: Container[str] | None) -> Vectors:
  numbered = ((number, _decode(path, number, line)) for number, line in enumerate(lines, 1))
  numbered = ((number, line) for number, line in numbered if line)  # blank lines carry nothing
  first = next(numbered, None)
  if first is None:
    raise UserError(f'{path} is empty: it holds no vectors')
  header = _header(first[1])
  if header is None:
    numbered = itertools.chain([first], numbered)
  file_dim = header[1] if header else first[1].count(' ')
  if file_dim < 1:
    raise UserError(f'{path}:{first[0]}: no numbers after the word')
  if dim is not None and file_dim != dim:
    raise UserError(f'{path} holds {file_dim}-dimensional vectors, but embedding_dim is {dim}')
  vectors = _parse(path, numbered, file_dim, keep)
  if not vectors.lines:
    raise UserError(f'{path} holds no {file_dim}-dimensional vectors ({vectors.skipped} lines '
                    'with more numbers)' if vectors.skipped else f'{path} holds no vectors')
  if header and header[0] != vectors.lines + vectors.skipped:
    raise UserError(f'{path}: its header announces {header[0]:,} vectors, it holds '
                    f'{vectors.lines + vectors.skipped:,} (cut short?)')
  return vectors


def _decode(path: Path, number: int, line: bytes) -> str:
  # Line by line, so that bytes that are not UTF-8 are named by their line.
  try:
    return line.decode('utf-8').rstrip()
  except UnicodeDecodeError:
    raise UserError(f'{path}:{number}: not UTF-8 text; a binary word2vec file? (save it as '
                    'text)') from None


def _header(line: str) -> tuple[int, int] | None:
  """(count, dim) of a word2vec header line, None for a line of GloVe."""
  fields = line.split(' ')
  if len(fields) == 2 and all(field.isdigit() for field in fields):
    return int(fields[0]), int(fields[1])
  return None


def _parse(path: Path, numbered: Iterator[tuple[int, str]], dim: int,
           keep: Container[str] | None) -> Vectors:
  """Splits into numbers only the lines of kept words: the others cost a scan for spaces."""
  first_line: dict[str, int] = {}  # kept word -> its line
  rows = []
  lines = skipped = duplicates = 0
  examples = {}  # the first skipped line and the first repeat, for the warnings
  for number, line in numbered:
    fields = line.count(' ') + 1
    if fields < dim + 1:
      raise UserError(f'{path}:{number}: {fields - 1} numbers after the word, expected {dim}')
    if fields > dim + 1:
      skipped += 1
      examples.setdefault('skipped', f'line {number}')
      continue
    lines += 1
    word = line[:line.index(' ')]
    if keep is not None and word not in keep:
      continue
    if word in first_line:
      duplicates += 1
      examples.setdefault('repeat', f'{word!r} on lines {first_line[word]} and {number}')
      continue
    first_line[word] = number
    rows.append(_numbers(path, number, word, line[len(word) + 1:]))
  if skipped:
    logging.warning('%s: skipped %d lines with more than a word and %d numbers (words with '
                    'spaces?), the first: %s', path, skipped, dim, examples['skipped'])
  if duplicates:
    logging.warning('%s: %d repeats of a word skipped, each word keeps its first vector; the '
                    'first: %s', path, duplicates, examples['repeat'])
  matrix = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
  return Vectors(list(first_line), matrix, lines, skipped, duplicates)


def _numbers(path: Path, number: int, word: str, values: str) -> np.ndarray:
  """f32[dim] from space-separated numbers, which must be finite."""
  try:
    row = np.array(values.split(' '), np.float32)
  except ValueError:
    raise UserError(f'{path}:{number}: the vector of {word!r} holds a value that is not a '
                    'number') from None
  if not np.isfinite(row).all():
    raise UserError(f'{path}:{number}: the vector of {word!r} holds '
                    f'{row[~np.isfinite(row)][0]}, not a finite number')
  return row


def embedding_matrix(path: str | Path, tokenizer: text.Tokenizer,
                     dim: int) -> tuple[np.ndarray, Coverage]:
  """The walkthrough's matrix: f32[vocab_size, dim], row i the vector of word id i.

  Row 0 (padding) and the rows of words without a vector are zeros, which a frozen model masks.
  Words match exactly: a tokenizer that keeps case misses the capitalised words of a lower-case
  file such as GloVe.
  """
  ids = {word: index for word, index in tokenizer.word_index.items()
         if index < tokenizer.vocab_size}
  vectors = read_vectors(path, dim=dim, keep=ids)
  matrix = np.zeros((tokenizer.vocab_size, dim), np.float32)
  matrix[[ids[word] for word in vectors.words]] = vectors.matrix
  return matrix, _coverage(str(path), ids, tokenizer.word_counts, vectors)


def _coverage(path: str, ids: dict[str, int], counts: dict[str, int],
              vectors: Vectors) -> Coverage:
  found = set(vectors.words)
  missing = [word for word in sorted(ids, key=ids.__getitem__) if word not in found]
  total = sum(counts.get(word, 0) for word in ids)
  covered = sum(counts.get(word, 0) for word in found)
  return Coverage(path, len(ids), len(found), covered / max(total, 1),
                  [(word, counts.get(word, 0)) for word in missing[:MISSING_SHOWN]], vectors)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
  """f32[n, dim]: each row scaled to length 1; zero rows stay zero (the walkthrough's NaN -> 0)."""
  norms = np.linalg.norm(matrix, axis=1, keepdims=True)
  return np.divide(matrix, norms, out=np.zeros_like(matrix, np.float32), where=norms > 0)


def nearest(matrix: np.ndarray, rows: Sequence[int], k: int) -> list[list[tuple[int, float]]]:
  """For each of `rows`, the k rows of f32[n, dim] `matrix` with the highest cosine similarity.

  A row is never its own neighbour, and zero rows (no vector) are nobody's. Returns, per query,
  (row, similarity) pairs, most similar first; ties in row order.
  """
  units = unit_rows(np.asarray(matrix, np.float32))
  has_vector = units.any(axis=1)
  results = []
  for row in rows:
    similarity = units @ units[row]
    similarity[~has_vector] = -np.inf
    similarity[row] = -np.inf
    order = np.argsort(-similarity, kind='stable')[:k]
    results.append([(int(i), float(similarity[i])) for i in order if similarity[i] > -np.inf])
  return results


def pca_2d(vectors: np.ndarray) -> np.ndarray:
  """f32[n, 2]: the points' coordinates along their two directions of largest variance.

  Signs are fixed (each direction's largest component positive) so that a map is reproducible.
  """
  centered = np.asarray(vectors, np.float64) - np.mean(vectors, axis=0)
  _, _, directions = np.linalg.svd(centered, full_matrices=False)
  directions = directions[:2]
  largest = np.abs(directions).argmax(axis=1)
  directions *= np.sign(directions[np.arange(len(directions)), largest])[:, None]
  coordinates = centered @ directions.T
  # Fewer than two directions exist for one point or one-dimensional vectors.
  return np.pad(coordinates, ((0, 0), (0, 2 - coordinates.shape[1]))).astype(np.float32)


def write_projector(out: str | Path, words: Sequence[str], counts: Sequence[int],
                    vectors: np.ndarray) -> tuple[Path, Path]:
  """Writes the Embedding Projector's files into the folder `out`; returns their paths.

  vectors.tsv: one row of f32[len(words), dim] `vectors` per line, tab-separated, no header.
  metadata.tsv: a header "word\\tcount", then each word and its count, in the same order.
  """
  out = Path(out)
  vectors_file, metadata_file = out / PROJECTOR_VECTORS, out / PROJECTOR_METADATA
  try:
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(vectors_file, vectors, fmt='%.7g', delimiter='\t')
    with open(metadata_file, 'w', encoding='utf-8') as f:
      f.write('word\tcount\n')
      f.writelines(f'{_tsv_field(word)}\t{count}\n' for word, count in zip(words, counts))
  except OSError as e:
    raise UserError(f'cannot write the projector files into {out}: {e.strerror}') from None
  return vectors_file, metadata_file


def _tsv_field(word: str) -> str:
  # Filters that keep tabs or line breaks inside words would otherwise break the rows apart.
  return word.replace('\\', '\\\\').replace('\t', '\\t').replace('\n', '\\n').replace('\r', '\\r')
