"""Texts from files: the patent abstracts (downloaded once, checksummed), csv, jsonl and txt.

Files are read as UTF-8 (an error names the line and byte otherwise); a `.txt` stream is
cleaned in pieces so that one long text costs no more than many short ones.
"""

import csv
import hashlib
import io
import json
import os
from pathlib import Path
import shutil
from typing import Iterator
import urllib.error
import urllib.request

from absl import logging

from rnn_jax.corpus import text
from rnn_jax.errors import UserError

PATENTS_URL = ('https://raw.githubusercontent.com/WillKoehrsen/recurrent-neural-networks/'
               'master/data/neural_network_patent_query.csv')
PATENTS_SHA256 = '6e9f9a2e4cf762b457de0b6fcd255412476970cd68c7b2ded763f88ed51e04f6'
PATENTS_FILE = 'neural_network_patent_query.csv'
STREAM_PIECE = 1 << 20  # characters of a stream cleaned and tokenized at a time


def data_dir() -> Path:
  """Where downloaded data lives: $RNN_JAX_DATA_DIR, else ~/.cache/rnn_jax."""
  return Path(os.environ.get('RNN_JAX_DATA_DIR', '~/.cache/rnn_jax')).expanduser()


def patents_path() -> Path:
  """The walkthrough's patent abstracts, downloaded on first use."""
  path = data_dir() / PATENTS_FILE
  if not path.exists():
    download(PATENTS_URL, path, PATENTS_SHA256)
  return path


def download(url: str, path: Path, sha256: str):
  """Fetches url to path, which appears only once its checksum is right."""
  logging.info('Downloading %s to %s', url, path)
  partial = path.with_name(path.name + '.part')
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, 'wb') as f:
      shutil.copyfileobj(response, f)
  except (OSError, urllib.error.URLError) as e:
    partial.unlink(missing_ok=True)
    raise UserError(f'could not download {url} ({e}); put the file at {path} '
                    'or point RNN_JAX_DATA_DIR at a folder that holds it') from None
  digest = hashlib.sha256(partial.read_bytes()).hexdigest()
  if digest != sha256:
    partial.unlink()
    raise UserError(f'checksum mismatch for {url}: expected sha256 {sha256}, got {digest}')
  partial.replace(path)


def read_texts(path: str | Path, text_column: str, txt_mode: str = 'lines') -> list[str]:
  """One string per document: a CSV column, a JSON Lines key, or a line of a .txt file (or with
  txt_mode 'stream' the whole .txt file)."""
  path = Path(path)
  readers = {'.csv': _read_csv, '.jsonl': _read_jsonl,
             '.txt': _read_txt_stream if txt_mode == 'stream' else _read_txt}
  if path.suffix not in readers:
    raise UserError(f'unknown data format {path.suffix!r} of {path}: use .csv, .jsonl or .txt')
  if not path.is_file():
    raise UserError(f'data file not found: {path}')
  texts = readers[path.suffix](_decode(path), path, text_column)
  if not texts:
    raise UserError(f'{path} holds no texts')
  return texts


def _decode(path: Path) -> str:
  """The file as UTF-8 text; anything else is named by line and byte offset."""
  raw = path.read_bytes()
  try:
    content = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise UserError(f'{path}:{_line_at(raw, e.start)}: not UTF-8 text (byte {e.start}: '
                    f'{raw[e.start:e.start + 1]!r}); is it a text file?') from None
  nul = raw.find(0)
  if nul >= 0:  # valid UTF-8, but no text holds it
    raise UserError(f'{path}:{_line_at(raw, nul)}: a NUL byte (byte {nul}); is it a text file?')
  return content


def _line_at(raw: bytes, offset: int) -> int:
  return raw.count(b'\n', 0, offset) + 1


def _read_csv(content: str, path: Path, column: str) -> list[str]:
  # csv's field limit (128 KiB) guards streams; a whole file in memory holds no larger field.
  limit = csv.field_size_limit(max(len(content), csv.field_size_limit()))
  try:
    reader = csv.DictReader(io.StringIO(content, newline=''))
    if column not in (reader.fieldnames or []):
      raise UserError(f'{path} has no column {column!r}; its columns: {reader.fieldnames}')
    return [row[column] or '' for row in reader]
  except csv.Error as e:
    raise UserError(f'{path}:{reader.line_num}: not valid CSV ({e})') from None
  finally:
    csv.field_size_limit(limit)


def _read_jsonl(content: str, path: Path, key: str) -> list[str]:
  texts = []
  for number, line in enumerate(content.splitlines(), 1):
    if not line.strip():
      continue
    try:
      value = json.loads(line)[key]
    except (TypeError, ValueError, RecursionError) as e:  # ValueError: bad JSON, huge ints
      raise UserError(f'{path}:{number}: not a JSON object ({e})') from None
    except KeyError:
      raise UserError(f'{path}:{number}: no key {key!r}') from None
    if not isinstance(value, str):
      raise UserError(f'{path}:{number}: {key!r} holds {json.dumps(value)[:40]}, not a text')
    texts.append(value)
  return texts


def _read_txt(content: str, unused_path: Path, unused_column: str) -> list[str]:
  return [line.strip() for line in content.splitlines() if line.strip()]


def _read_txt_stream(content: str, unused_path: Path, unused_column: str) -> list[str]:
  return [content] if content.strip() else []


def stream_pieces(content: str, char_level: bool) -> Iterator[str]:
  """A stream cleaned (`text.clean`) in pieces of about STREAM_PIECE characters, each cut after a
  space or line break, so that no word spans two: the pieces' tokens are the stream's.

  Line breaks are characters at char level ('\r\n' and '\r' read as '\n', as Python reads
  text files) and spaces between words at word level.
  """
  begin = 0
  while begin < len(content):
    end = begin + STREAM_PIECE
    cut = max(content.rfind(' ', begin, end), content.rfind('\n', begin, end))
    if end < len(content) and cut >= begin:
      end = cut + 1
    piece = content[begin:end].replace('\r\n', '\n').replace('\r', '\n')
    yield text.clean(piece if char_level else piece.replace('\n', ' '), char_level)
    begin = end
