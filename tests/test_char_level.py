"""Character-level models and plain-text streams: tokenizing, windows, bits, a tiny model."""

import json
import math
from pathlib import Path
import subprocess
import sys

import jax
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.configs import Config, DataConfig, ModelConfig, TrainConfig
from rnn_jax.corpus import data
from rnn_jax.corpus import files
from rnn_jax.corpus import seeds
from rnn_jax.corpus import text
from rnn_jax.errors import UserError
from rnn_jax.generation import sampling
from rnn_jax.serve import game
from rnn_jax.training import metrics

REPO = Path(__file__).parents[1]
PATTERN = 'abc\ndefgh\n'  # after '\n' comes 'd' or 'a': the model must read more than one character
MIXED = 'Hello, World!\n  Ünïcödé – 𝄞 tabs\tand "quotes" (12).\r\nlast line'


def char_config(path: Path, **data_fields) -> Config:
  # Every character its own id, as the stream's whole text gives them (the vocabulary of the
  # training part has its own tests in test_data).
  fields = dict(data=str(path), level='char', txt_mode='stream', training_length=8,
                min_extra_words=0, min_count=0) | data_fields
  return Config(data=DataConfig(**fields))


def write(path: Path, content: str) -> Path:
  path.write_bytes(content.encode('utf-8'))
  return path


@pytest.mark.parametrize('fields', [{}, {'lower': True}, {'num_words': 6}, {'oov_token': '~'}])
def test_char_ids_match_the_keras_reference_and_read_back_as_the_text(fields):
  tokenizer = text.Tokenizer(**dict(char_level=True, lower=False) | fields)
  tokenizer.fit_on_texts([MIXED, 'aaa bbb'])
  # The vectorised path against Keras' (texts_to_sequences), with characters never seen (≠).
  for sample in (MIXED, 'x ≠ y', ''):
    assert tokenizer.text_to_ids(sample).tolist() == tokenizer.texts_to_sequences([sample])[0]
  if not fields:
    # Every character is a token: case, punctuation, spacing and the astral 𝄞 kept.
    assert seeds.show(tokenizer, tokenizer.text_to_ids(MIXED)) == MIXED
    assert tokenizer.text_to_ids(MIXED).dtype == np.int32


def test_char_level_keeps_case_and_punctuation_and_forbids_filters(tmp_path):
  path = write(tmp_path / 'book.txt', MIXED * 3)
  tokenizer = data.prepare(char_config(path)).tokenizer
  assert {'H', 'W', ',', '!', '"', '(', '\t', ' ', '\n', '𝄞'} <= set(tokenizer.word_index)
  assert '\r' not in tokenizer.word_index  # line breaks are read as '\n'
  with pytest.raises(UserError, match="filters apply at level 'word' only"):
    DataConfig(level='char', filters='!')


def test_show_joins_characters_as_they_are_and_words_with_the_walkthrough_clean_up():
  chars = text.Tokenizer(char_level=True, lower=False)
  chars.fit_on_texts(['a , b\n'])
  assert seeds.show(chars, chars.text_to_ids('b , a\n')) == 'b , a\n'
  words = text.Tokenizer(filters='')
  words.fit_on_texts(['a , b'])
  assert seeds.show(words, words.text_to_ids('b , a')) == 'b, a'


def test_stream_windows_cross_line_breaks_and_the_split_is_contiguous(tmp_path):
  content = ''.join(f'line {i:03d}\n' for i in range(100))  # 900 characters
  path = write(tmp_path / 'book.txt', content)
  dataset = data.prepare(char_config(path, train_fraction=0.6, valid_fraction=0.3))
  show = lambda ids: seeds.show(dataset.tokenizer, ids)
  parts = [dataset.train, dataset.valid, dataset.test]
  # The text cut at 60 % and 90 %, each part whole and in order.
  assert [show(part.tokens) for part in parts] == [content[:540], content[540:810], content[810:]]
  for part, (begin, end) in zip(parts, [(0, 540), (540, 810), (810, 900)]):
    features, labels = part.take(np.arange(len(part)))
    expected = [(content[i:i + 8], content[i + 8]) for i in range(begin, end - 8)]
    assert [(show(f), show([l])) for f, l in zip(features, labels)] == expected
  assert sum('\n' in show(f) for f in dataset.train.take(np.arange(len(dataset.train)))[0]) > 400
  # No copies: the three parts are views of one array, the windows indices into it.
  assert dataset.train.tokens.base is dataset.test.tokens.base is not None
  assert dataset.train.starts.dtype == np.int32
  assert dataset.summary()['num_texts'] == 1 and dataset.valid_texts[0] is dataset.valid.tokens


def test_word_level_stream_reads_line_breaks_as_spaces(tmp_path):
  words = [('alpha', 'beta', 'gamma', 'delta', 'eps', 'zeta', 'eta')[i % 7] for i in range(60)]
  lines = [' '.join(words[i:i + 5]) + ('.' if i % 2 else '') for i in range(0, 60, 5)]
  path = write(tmp_path / 'book.txt', '\r\n'.join(lines))
  dataset = data.prepare(char_config(path, level='word', training_length=4))
  # One text: the lines joined by spaces, with the walkthrough's clean-up ("w3." is two words).
  cleaned = text.format_patent(' '.join(lines))
  expected = data.fit_tokenizer(DataConfig(min_count=0), [cleaned])
  ids = np.concatenate([part.tokens for part in (dataset.train, dataset.valid, dataset.test)])
  assert list(dataset.tokenizer.word_index.items()) == list(expected.word_index.items())
  assert ids.tolist() == expected.texts_to_sequences([cleaned])[0]
  assert '.' in expected.word_index


def test_a_long_stream_is_tokenized_in_pieces_that_split_no_word(tmp_path, monkeypatch):
  monkeypatch.setattr(files, 'STREAM_PIECE', 10)
  content = 'alpha beta\ngamma  delta epsilon zeta eta theta ' * 5
  path = write(tmp_path / 'book.txt', content)
  for level in ('word', 'char'):
    whole = text.Tokenizer(char_level=level == 'char', lower=False)
    whole.fit_on_texts([text.clean(content.replace('\n', ' ') if level == 'word' else content,
                                   level == 'char')])
    dataset = data.prepare(char_config(path, level=level, training_length=2))
    assert list(dataset.tokenizer.word_counts.items()) == list(whole.word_counts.items())
    parts = [dataset.train, dataset.valid, dataset.test]
    assert sum(len(part.tokens) for part in parts) == sum(whole.word_counts.values())


@pytest.mark.parametrize('content, fields, message', [
    (b'ok\nbad \xc3\x28 byte', {}, r'book\.txt:2: not UTF-8 text \(byte 7'),
    (b'', {}, 'holds no texts'),
    (b' \n\n ', {}, 'holds no texts'),
    (b'abcdefg', {}, 'the text has 7 characters, not more than 8 characters'),
    (b'abcdefghijkl', {}, 'the text\'s 12 characters are too few to split into train and '
                          'validation windows of 8 characters'),
    (b'a b c d e f g h i j', {'level': 'word', 'min_extra_words': 2},
     'the text has 10 words, not more than 10 words'),
])
def test_bad_streams_are_one_clear_error(tmp_path, content, fields, message):
  path = tmp_path / 'book.txt'
  path.write_bytes(content)
  with pytest.raises(UserError, match=message):
    data.prepare(char_config(path, **fields))


def test_stream_needs_a_txt_file_and_old_configs_read_as_word_level_lines():
  with pytest.raises(UserError, match="txt_mode 'stream' reads a .txt file"):
    DataConfig(data='abstracts.csv', txt_mode='stream')
  with pytest.raises(UserError, match='level must be one of'):
    DataConfig(level='byte')
  saved = json.loads(Config().to_json())
  del saved['level'], saved['txt_mode']  # a run from before issue 11
  assert Config.from_json(json.dumps(saved)).data == DataConfig()


def test_bits_are_the_loss_over_ln_2():
  means = metrics.summarize({'loss': 6.0, 'accuracy': 1.0, 'top5_accuracy': 2.0, 'count': 4.0})
  assert means['bits'] == pytest.approx(1.5 / math.log(2))
  assert metrics.bits(math.log(2)) == pytest.approx(1.0)


@pytest.fixture(scope='module')
def char_run(tmp_path_factory) -> tuple[Path, dict]:
  """A tiny character model trained on the pattern repeated, one stream with line breaks."""
  path = write(tmp_path_factory.mktemp('pattern') / 'pattern.txt', PATTERN * 200)
  config = Config(
      data=DataConfig(data=str(path), level='char', txt_mode='stream', training_length=8,
                      min_extra_words=0),
      model=ModelConfig(embedding_dim=8, rnn_units=16, dense_units=16, dropout=0.0,
                        recurrent_dropout=0.0, dense_dropout=0.0),
      train=TrainConfig(batch_size=64, max_epochs=8, learning_rate=0.03))
  workdir = tmp_path_factory.mktemp('char_run')
  return workdir, train.train_and_evaluate(config, workdir)


def test_a_tiny_char_model_learns_the_pattern_and_writes_it_greedily(char_run):
  workdir, results = char_run
  assert results['valid']['bits'] == pytest.approx(results['valid']['loss'] / math.log(2))
  assert results['valid']['accuracy'] == 1.0
  config, tokenizer, model, params = train.load(workdir)
  # A seed as long as the window: the model only ever read whole windows from a zero state.
  seed = seeds.from_text((PATTERN * 2)[1:9], tokenizer)
  generated = sampling.continue_seeds(model, params, [seed], config.data.training_length,
                                      jax.random.key(0), 25, temperature=0.0)
  assert seeds.show(tokenizer, np.asarray(generated.tokens)[0]) == (PATTERN * 4)[9:34]


def test_the_game_shows_char_passages_as_text(char_run):
  workdir, _ = char_run
  config, tokenizer, model, params = train.load(workdir)
  texts = data.prepare(config).valid_texts
  rounds = game.make_rounds(model, params, tokenizer, texts, config.data.training_length,
                            count=2, num_words=12, rng_seed=0)
  for game_round in rounds:
    # Characters joined as they are: 8 of them, not 8 joined by spaces.
    assert game_round.seed in PATTERN * 3 and len(game_round.seed) == 8
    assert game_round.continuations[game_round.human] in PATTERN * 4
    assert [len(c) for c in game_round.continuations] == [12] * 3


def test_sample_cli_joins_the_characters_it_writes(char_run, tmp_path):
  workdir, _ = char_run
  output = tmp_path / 'samples.jsonl'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.sample', f'--workdir={workdir}', '--seed_text=defgh\nab',
       '--num_words=12', '--temperature=0', f'--output={output}'],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  record = json.loads(output.read_text())
  assert (record['seed'], record['generated']) == ('defgh\nab', 'c\ndefgh\nabc\n')


def test_prepare_reads_the_char_flagfile_with_a_stream_and_reports_bad_bytes_on_one_line(tmp_path):
  def prepare(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'experiments.prepare', '--flagfile=char_quickstart.flags',
         f'--data={path}', '--txt_mode=stream'], cwd=REPO, capture_output=True, text=True)

  good = write(tmp_path / 'good.txt', 'a line of text\n' * 100)  # 1,500 characters, 11 distinct
  result = prepare(good)
  assert result.returncode == 0, result.stderr
  # 1,200 / 150 / 150 characters, each part's windows of 100 inside it; padding, the unknown
  # character and the 11.
  assert json.loads(result.stdout).items() >= dict(
      num_words=13, unknown_test=0.0, num_texts=1, num_train=1100, num_valid=50, num_test=50).items()
  bad = tmp_path / 'bad.txt'
  bad.write_bytes(b'fine\n' * 3 + b'\xff')
  result = prepare(bad)
  assert (result.returncode, result.stderr.strip()) == (
      2, f"error: {bad}:4: not UTF-8 text (byte 15: b'\\xff'); is it a text file?")
