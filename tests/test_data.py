import csv
import dataclasses
import hashlib
import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from rnn_jax.configs import Config, DataConfig
from rnn_jax.corpus import data
from rnn_jax.corpus import files
from rnn_jax.corpus import overlap
from rnn_jax.errors import UserError

REPO = Path(__file__).parents[1]
SHARED_DATA = Path(os.environ.get('RNN_JAX_DATA_DIR', REPO.parent / 'shared' / 'data'))
PATENTS = SHARED_DATA / files.PATENTS_FILE


def write_documents(path: Path, num_documents: int, words_per_document: int) -> Path:
  """One line per document, every word unique to its document (d3w7 ...)."""
  lines = [' '.join(f'd{d}w{w}' for w in range(words_per_document)) for d in range(num_documents)]
  path.write_text('\n'.join(lines) + '\n')
  return path


def config_for(path: Path, **data_fields) -> Config:
  fields = dict(data=str(path), training_length=5, min_extra_words=0, min_count=0) | data_fields
  return Config(data=DataConfig(**fields))


def test_windows_match_the_walkthrough_loop():
  sequences = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
  length = 3
  windows = data.make_windows(sequences, length)
  expected = [(s[i - length:i], s[i]) for s in sequences for i in range(length, len(s))]
  features, labels = windows.take(np.arange(len(windows)))
  assert [(list(f), int(l)) for f, l in zip(features, labels)] == expected
  np.testing.assert_array_equal(windows.labels, [l for _, l in expected])


def test_batches_cover_every_window_once_and_pad_with_zero_weight():
  windows = data.make_windows([list(range(1, 30))], 4)  # 25 windows
  batches = list(data.batches(windows, 8, seed=3, epoch=1))
  assert [f.shape for f, _, _ in batches] == [(8, 4)] * 4
  weights = np.concatenate([w for _, _, w in batches])
  assert weights.sum() == 25 and not weights[25:].any()
  labels = np.concatenate([l for _, l, _ in batches])[weights > 0]
  assert sorted(labels) == list(range(5, 30))


def test_batch_order_depends_only_on_seed_and_epoch():
  windows = data.make_windows([list(range(1, 100))], 2)
  order = lambda seed, epoch: np.concatenate(
      [l for _, l, _ in data.batches(windows, 16, seed=seed, epoch=epoch)])
  np.testing.assert_array_equal(order(0, 1), order(0, 1))
  assert not np.array_equal(order(0, 1), order(0, 2))
  assert not np.array_equal(order(0, 1), order(1, 1))


def test_abstract_split_keeps_each_text_in_one_set(tmp_path):
  path = write_documents(tmp_path / 'docs.txt', 40, 12)
  dataset = data.prepare(config_for(path, train_fraction=0.5, valid_fraction=0.25))
  token_sets = [set(part.tokens[part.starts].tolist())
                for part in (dataset.train, dataset.valid, dataset.test)]
  assert all(token_sets)
  assert not token_sets[0] & token_sets[1] and not token_sets[0] & token_sets[2]
  assert dataset.summary()['num_windows'] == 40 * (12 - 5)
  assert (len(dataset.train), len(dataset.valid), len(dataset.test)) == (20 * 7, 10 * 7, 10 * 7)


def test_copies_of_a_text_stay_in_one_set_and_held_out_sets_hold_it_once(tmp_path):
  lines = [' '.join(f'd{d}w{w}' for w in range(12)) for d in range(30)]
  lines += lines[:10] * 2 + lines[10:15]  # 25 copies of 15 texts
  path = tmp_path / 'docs.txt'
  path.write_text('\n'.join(lines))
  config = config_for(path, train_fraction=0.5, valid_fraction=0.25)
  dataset = data.prepare(config)
  firsts = [set(part.tokens[part.starts].tolist())
            for part in (dataset.train, dataset.valid, dataset.test)]
  assert not firsts[0] & firsts[1] and not firsts[0] & firsts[2] and not firsts[1] & firsts[2]
  # 30 distinct texts: 15 train, 7 validation, 8 test; training keeps its copies.
  assert (len(dataset.valid), len(dataset.test)) == (7 * 7, 8 * 7)
  copies_in_train = sum(1 + 2 * (d < 10) + (10 <= d < 15) for d in range(30)
                        if f'd{d}w0' in dataset.tokenizer.word_index
                        and dataset.tokenizer.word_index[f'd{d}w0'] in firsts[0])
  assert len(dataset.train) == copies_in_train * 7
  assert dataset.duplicate_texts == 25
  assert data.leakage(dataset) == {'valid_windows_in_train': 0.0, 'test_windows_in_train': 0.0}


def test_the_vocabulary_is_the_training_texts_words_seen_min_count_times(tmp_path):
  # Each text: 'shared' words every text has, then words of its own, one of them twice.
  lines = [' '.join(['common', 'words', 'here'] + [f'd{d}w{w}' for w in range(8)] + [f'd{d}w0'])
           for d in range(40)]
  path = tmp_path / 'docs.txt'
  path.write_text('\n'.join(lines))
  dataset = data.prepare(config_for(path, min_count=2, train_fraction=0.5, valid_fraction=0.25))
  tokenizer = dataset.tokenizer
  assert tokenizer.word_index[data.UNKNOWN] == 1
  train_docs = {w.split('w')[0] for w in tokenizer.word_index if w.startswith('d')}
  # Only the word each training text has twice is counted twice: it alone has an id.
  assert sorted(w for w in tokenizer.word_index if w.startswith('d')) == sorted(
      f'{d}w0' for d in train_docs)
  assert len(train_docs) == 20 and {'common', 'words', 'here'} <= tokenizer.word_index.keys()
  decoded = tokenizer.sequences_to_texts(dataset.valid_texts)
  assert all(text.split()[3:] == [data.UNKNOWN] * 9 for text in decoded)
  # Labels: the 7 words after the first 5 of a text, w2 ... w7 unknown, w0 known.
  assert dataset.summary().items() >= dict(unknown_train=round(6 / 7, 4), unknown_valid=1.0,
                                           unknown_test=1.0, num_words=2 + 3 + 20).items()


def test_min_count_0_gives_every_word_of_every_text_its_own_id(tmp_path):
  path = write_documents(tmp_path / 'docs.txt', 40, 12)
  dataset = data.prepare(config_for(path, min_count=0, train_fraction=0.5, valid_fraction=0.25))
  assert dataset.tokenizer.vocab_size == 40 * 12 + 1 and data.UNKNOWN not in (
      dataset.tokenizer.word_index)
  assert dataset.summary()['unknown_test'] == 0.0


def test_a_saved_config_without_the_new_fields_keeps_the_old_protocol():
  config = Config.from_json(json.dumps({'split': 'abstracts', 'num_words': 10}))
  assert (config.data.min_count, config.data.near_copy_share) == (0, 0.0)
  assert (DataConfig().min_count, DataConfig().near_copy_share) == (2, 0.05)


def _near_copies_by_brute_force(sequences, length, share):
  windows = [{tuple(s[i:i + length + 1]) for i in range(len(s) - length)} for s in sequences]
  edges = {(a, b) for a in range(len(sequences)) for b in range(len(sequences)) if a < b and
           max(len(windows[a] & windows[b]) / len(windows[a]),
               len(windows[a] & windows[b]) / len(windows[b])) >= share}
  groups = {i: {i} for i in range(len(sequences))}
  for a, b in edges:
    merged = groups[a] | groups[b]
    for i in merged:
      groups[i] = merged
  return sorted({tuple(sorted(g)) for g in groups.values() if len(g) > 1})


@pytest.mark.parametrize('seed', range(5))
def test_near_copies_match_a_brute_force_reference(seed):
  rng = np.random.default_rng(seed)
  sequences = [rng.integers(1, 4, rng.integers(4, 15)) for _ in range(25)]  # a 3-word language
  windows = data.make_windows(sequences, 3)
  owner = np.repeat(np.arange(len(sequences)), [len(s) - 3 for s in sequences])
  near_copies = lambda share: overlap.near_copies(windows.tokens, windows.starts, owner, 3, share)
  for share in (0.3, 0.6, 1.0):
    assert sorted(map(tuple, near_copies(share))) == _near_copies_by_brute_force(sequences, 3,
                                                                                 share)
  assert near_copies(0.3)  # the case is not empty


def test_near_copies_stay_in_one_set(tmp_path):
  base = [' '.join(f'd{d}w{w}' for w in range(20)) for d in range(30)]
  # Text 30 + d copies text d but for its last 6 words: 9 of its 15 windows are text d's.
  lines = base + [' '.join(line.split()[:14] + [f'n{d}w{w}' for w in range(6)])
                  for d, line in enumerate(base[:10])]
  path = tmp_path / 'docs.txt'
  path.write_text('\n'.join(lines))
  sets_apart = 0
  for seed in range(4):
    for share, together in ((0.5, True), (0.7, False)):
      dataset = data.prepare(dataclasses.replace(
          config_for(path, min_count=0, near_copy_share=share, train_fraction=0.5,
                     valid_fraction=0.25), seed=seed))
      assert len(dataset.near_copy_groups) == (10 if together else 0)
      index = dataset.tokenizer.word_index
      parts = [set(part.tokens.tolist()) for part in (dataset.train, dataset.valid, dataset.test)]
      set_of = lambda word: [index[word] in part for part in parts].index(True)
      # d{d}w19 is text d's alone, n{d}w0 its near-copy's.
      apart = sum(set_of(f'd{d}w19') != set_of(f'n{d}w0') for d in range(10))
      if together:
        assert apart == 0 and data.leakage(dataset) == {
            'valid_windows_in_train': 0.0, 'test_windows_in_train': 0.0}
      sets_apart += apart
  assert sets_apart  # without the grouping, some copies land in another set


def test_leakage_counts_held_out_windows_seen_in_training(tmp_path):
  path = write_documents(tmp_path / 'docs.txt', 40, 12)
  path.write_text(path.read_text() * 2)  # every text twice: some windows on both sides
  dataset = data.prepare(config_for(path, split='windows', train_fraction=0.5,
                                    valid_fraction=0.5))
  seen = {tuple(row) for row in np.column_stack(dataset.train.take(np.arange(len(dataset.train))))}
  valid = np.column_stack(dataset.valid.take(np.arange(len(dataset.valid))))
  expected = np.mean([tuple(row) in seen for row in valid])
  assert 0.2 < expected < 0.9
  assert data.leakage(dataset)['valid_windows_in_train'] == round(expected, 4)


def test_window_split_mixes_texts_and_is_seeded(tmp_path):
  path = write_documents(tmp_path / 'docs.txt', 10, 30)
  config = config_for(path, split='windows', train_fraction=0.7, valid_fraction=0.3)
  dataset = data.prepare(config)
  assert (len(dataset.train), len(dataset.valid), len(dataset.test)) == (175, 75, 0)
  first_words = lambda windows: {w.split('w')[0] for w in dataset.tokenizer.sequences_to_texts(
      [windows.tokens[windows.starts].tolist()])[0].split()}
  assert first_words(dataset.train) & first_words(dataset.valid)  # the walkthrough's leak
  again = data.prepare(config)
  np.testing.assert_array_equal(again.valid.starts, dataset.valid.starts)


def test_texts_too_short_for_the_window_are_an_error(tmp_path):
  path = write_documents(tmp_path / 'docs.txt', 5, 10)
  with pytest.raises(UserError, match='more than 30 words'):
    data.prepare(config_for(path, training_length=20, min_extra_words=10))


def test_reads_csv_with_quotes_commas_and_newlines(tmp_path):
  path = tmp_path / 'texts.csv'
  path.write_text('id,body\n1,"a, ""quoted""\nline"\n2,plain\n', encoding='utf-8')
  assert files.read_texts(path, 'body') == ['a, "quoted"\nline', 'plain']
  with pytest.raises(UserError, match="no column 'text'.*'id', 'body'"):
    files.read_texts(path, 'text')


def test_a_csv_field_larger_than_csvs_default_limit_is_read(tmp_path):
  path = tmp_path / 'texts.csv'
  long_text = 'word ' * 100_000  # 500 kB: csv refuses fields over 128 KiB by default
  path.write_text(f'body\n"{long_text}"\nshort\n', encoding='utf-8')
  limit = csv.field_size_limit()
  assert files.read_texts(path, 'body') == [long_text, 'short']
  assert csv.field_size_limit() == limit  # the process's limit is left as it was


def test_jsonl_values_that_are_not_text_are_named(tmp_path):
  jsonl = tmp_path / 'texts.jsonl'
  cases = {'5': "'t' holds 5, not a text", 'null': "'t' holds null, not a text",
           '["a"]': "'t' holds \\[\"a\"\\], not a text",
           '1' + '0' * 5000: 'not a JSON object .*digits'}  # past Python's int-string limit
  for value, message in cases.items():
    jsonl.write_text('{"t": "ok"}\n{"t": ' + value + '}\n')
    with pytest.raises(UserError, match='texts.jsonl:2: ' + message):
      files.read_texts(jsonl, 't')


def test_reads_jsonl_and_txt(tmp_path):
  jsonl = tmp_path / 'texts.jsonl'
  jsonl.write_text(json.dumps({'t': 'first'}) + '\n\n' + json.dumps({'t': 'second'}) + '\n')
  assert files.read_texts(jsonl, 't') == ['first', 'second']
  with pytest.raises(UserError, match=r'texts.jsonl:1: no key'):
    files.read_texts(jsonl, 'text')
  jsonl.write_text('{"t": "ok"}\nnot json\n')
  with pytest.raises(UserError, match=r'texts.jsonl:2: not a JSON object'):
    files.read_texts(jsonl, 't')
  txt = tmp_path / 'texts.txt'
  txt.write_text('one doc\n\n  two doc \n')
  assert files.read_texts(txt, 'ignored') == ['one doc', 'two doc']


def test_bad_data_paths_are_errors(tmp_path):
  with pytest.raises(UserError, match='not found'):
    files.read_texts(tmp_path / 'missing.csv', 'x')
  with pytest.raises(UserError, match='unknown data format'):
    files.read_texts(tmp_path / 'data.parquet', 'x')


def test_download_checks_the_checksum(tmp_path):
  source = tmp_path / 'source.csv'
  source.write_bytes(b'patent_abstract\nhello\n')
  digest = hashlib.sha256(source.read_bytes()).hexdigest()
  target = tmp_path / 'cache' / 'file.csv'
  with pytest.raises(UserError, match='checksum mismatch'):
    files.download(source.as_uri(), target, '0' * 64)
  assert not target.exists() and not list(target.parent.iterdir())
  files.download(source.as_uri(), target, digest)
  assert target.read_bytes() == source.read_bytes()
  with pytest.raises(UserError, match='could not download'):
    files.download((tmp_path / 'absent').as_uri(), tmp_path / 'other.csv', digest)


def test_cached_patents_are_not_downloaded_again(tmp_path, monkeypatch):
  (tmp_path / files.PATENTS_FILE).write_text('patent_abstract\nx\n')
  monkeypatch.setenv('RNN_JAX_DATA_DIR', str(tmp_path))
  monkeypatch.setattr(files, 'download', lambda *args: pytest.fail('downloaded'))
  assert files.patents_path() == tmp_path / files.PATENTS_FILE


@pytest.mark.skipif(not PATENTS.exists(), reason=f'the patent corpus is not at {PATENTS}')
@pytest.mark.parametrize('flagfile, expected', [
    ('seed_trainable', dict(num_words=16192, num_kept_texts=3255, num_windows=318563,
                            num_train=222994, num_valid=95569, num_test=0)),
    ('seed_pretrained', dict(num_words=13677, num_kept_texts=3259, num_windows=320881,
                             num_train=224616, num_valid=96265, num_test=0)),
])
def test_prepare_prints_the_walkthrough_figures(flagfile, expected):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.prepare',
       f'--flagfile=experiments/configs/{flagfile}.flags'],
      cwd=REPO, env=os.environ | {'RNN_JAX_DATA_DIR': str(SHARED_DATA)},
      capture_output=True, text=True, check=True)
  figures = json.loads(result.stdout)
  assert figures.items() >= (dict(num_texts=3522) | expected).items()
  # The window split leaks: a validation window can be a training window word for word.
  assert 0.1 < figures['valid_windows_in_train'] < 0.3 and figures['duplicate_texts'] > 300


def test_prepare_reports_bad_input_on_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.prepare', f'--data={tmp_path / "none.csv"}'],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.strip() == f'error: data file not found: {tmp_path / "none.csv"}'


@pytest.mark.parametrize('content, message', [
    (b'fine\nbad \xff byte\n', r'bad\.txt:2: not UTF-8 text \(byte 9'),
    (b'\x00\x01\x02binary', r'bad\.txt:1: a NUL byte \(byte 0\)'),
    (b'', 'holds no texts'),
    (b'\n  \n', 'holds no texts'),
])
def test_files_that_are_not_text_are_named_by_line_and_byte(tmp_path, content, message):
  path = tmp_path / 'bad.txt'
  path.write_bytes(content)
  with pytest.raises(UserError, match=message):
    files.read_texts(path, 'x')
