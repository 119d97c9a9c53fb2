"""Vectors files, the embedding matrix and its coverage, cosine neighbours, PCA and projector
files; and in the model, frozen pre-trained rows that stay put and zero rows that are masked."""

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.configs import Config, DataConfig, ModelConfig, TrainConfig
from rnn_jax.corpus import embeddings
from rnn_jax.corpus import text
from rnn_jax.errors import UserError
from rnn_jax.model.word_rnn import WordRNN

from conftest import CYCLE, read_metrics, tiny_config

# Ids by count, ties in first-seen order: the 1, cat 2, sat 3, dog 4, a 5, on 6, mat 7, and 8.
TEXTS = ['the cat sat on the mat', 'the dog sat', 'a cat and a dog']
VECTORS = {'zebra': [9.0, 9.0, 9.0], 'the': [0.5, -1.25, 2.0], 'cat': [1.0, 0.0, 0.0],
           'dog': [0.75, 0.25, 0.0], 'on': [-3.5, 1e-3, 42.0], 'and': [0.0, 0.0, -1.0]}
MISSING = [('sat', 2), ('a', 2), ('mat', 1)]  # vocabulary words without a vector, by id


def tokenizer(num_words: int | None = None) -> text.Tokenizer:
  fitted = text.Tokenizer(num_words=num_words)
  fitted.fit_on_texts(TEXTS)
  return fitted


def glove_lines(vectors: dict[str, list[float]]) -> list[str]:
  return [' '.join([word, *map(repr, map(float, vector))]) for word, vector in vectors.items()]


def write(tmp_path: Path, content: str | bytes, name: str = 'vectors.txt') -> Path:
  path = tmp_path / name
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content, encoding='utf-8')
  return path


def test_rows_of_the_matrix_are_the_vectors_of_the_tokenizer_ids(tmp_path):
  fitted = tokenizer()
  path = write(tmp_path, '\n'.join(glove_lines(VECTORS)) + '\n')
  matrix, _ = embeddings.embedding_matrix(path, fitted, 3)
  assert matrix.shape == (fitted.vocab_size, 3) and matrix.dtype == np.float32
  for word, index in fitted.word_index.items():
    expected = VECTORS.get(word, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(matrix[index], np.float32(expected), err_msg=word)
  np.testing.assert_array_equal(matrix[0], 0)  # padding


def test_word2vec_header_and_trailing_spaces_read_like_glove(tmp_path):
  glove = write(tmp_path, '\n'.join(glove_lines(VECTORS)), 'glove.txt')
  # word2vec's C tool ends every number with a space; Windows line ends end the lines here.
  word2vec = write(tmp_path, f'{len(VECTORS)} 3\r\n' + ''.join(
      line + ' \r\n' for line in glove_lines(VECTORS)), 'word2vec.txt')
  expected, _ = embeddings.embedding_matrix(glove, tokenizer(), 3)
  matrix, coverage = embeddings.embedding_matrix(word2vec, tokenizer(), 3)
  np.testing.assert_array_equal(matrix, expected)
  assert coverage.vectors.lines == len(VECTORS)


def test_coverage_counts_words_and_tokens_and_names_the_commonest_missing(tmp_path):
  path = write(tmp_path, '\n'.join(glove_lines(VECTORS)))
  _, coverage = embeddings.embedding_matrix(path, tokenizer(), 3)
  assert (coverage.words, coverage.found, coverage.missing) == (8, 5, 3)
  # Tokens: the 3 + cat 2 + dog 2 + on 1 + and 1 of 14.
  assert coverage.token_share == pytest.approx(9 / 14)
  assert coverage.most_frequent_missing == MISSING
  assert coverage.vectors.lines == 6  # zebra too, though not kept
  assert coverage.summary() == (
      f'5 of 8 words have a vector in {path} (62.5%; 64.3% of the words in the texts); 3 are '
      'zeros; most frequent without one: sat (2), a (2), mat (1)')


def test_num_words_limits_the_matrix_to_the_ids_a_sequence_can_hold(tmp_path):
  path = write(tmp_path, '\n'.join(glove_lines(VECTORS)))
  matrix, coverage = embeddings.embedding_matrix(path, tokenizer(num_words=4), 3)
  assert matrix.shape == (4, 3)  # the, cat, sat
  np.testing.assert_array_equal(matrix[2], VECTORS['cat'])
  assert (coverage.words, coverage.found, coverage.most_frequent_missing) == (3, 2, [('sat', 2)])


@pytest.mark.parametrize('content, message', [
    ('the 1 2 3\ncat 1 2\n', r'vectors.txt:2: 2 numbers after the word, expected 3'),
    ('the 1 2 3\n\ncat 1 x 3\n',
     r"vectors.txt:3: the vector of 'cat' holds a value that is not a number"),
    ('cat 1 nan 3\n', r"vectors.txt:1: the vector of 'cat' holds nan, not a finite number"),
    ('cat 1 2 -inf\n', r"holds -inf, not a finite number"),
    ('the 1 2 3 4\ncat 1 2 3 4\n', 'holds 4-dimensional vectors, but embedding_dim is 3'),
    ('2 4\nthe 1 2 3 4\ncat 1 2 3 4\n', 'holds 4-dimensional vectors, but embedding_dim is 3'),
    ('', 'is empty: it holds no vectors'),
    ('\n \n', 'is empty: it holds no vectors'),
    ('0 3\n', 'holds no vectors$'),
    ('2 3\nnew york 1 2 3\n', r'holds no 3-dimensional vectors \(1 lines with more numbers\)'),
    ('3 3\nthe 1 2 3\ncat 1 2 3\n', r'its header announces 3 vectors, it holds 2 \(cut short\?\)'),
    ('the\ncat\n', 'vectors.txt:1: no numbers after the word'),
    (b'the 1 2 3\n\xff\xfe 1 2 3\n',
     r'vectors.txt:2: not UTF-8 text; a binary word2vec file\? \(save it as text\)'),
])
def test_malformed_files_are_named_on_one_line(tmp_path, content, message):
  path = write(tmp_path, content)
  with pytest.raises(UserError, match=message):
    embeddings.embedding_matrix(path, tokenizer(), 3)


def test_a_missing_file_is_an_error_and_names_are_also_looked_up_in_the_data_dir(
    tmp_path, monkeypatch):
  with pytest.raises(UserError, match='cannot read vectors file .*absent.txt'):
    embeddings.read_vectors(tmp_path / 'absent.txt')
  monkeypatch.setenv('RNN_JAX_DATA_DIR', str(tmp_path))
  monkeypatch.chdir(tmp_path.parent)
  path = write(tmp_path, 'the 1 2 3\n', 'glove.6B.100d.txt')
  assert embeddings.vectors_path('glove.6B.100d.txt') == path
  with pytest.raises(UserError, match=r'vectors file not found: other.txt \(nor .*other.txt\); '
                                      r'GloVe comes from https://nlp.stanford.edu/'):
    embeddings.vectors_path('other.txt')


def test_only_the_kept_words_are_parsed(tmp_path):
  # Streaming: a word outside the vocabulary costs a scan, its numbers are never read.
  path = write(tmp_path, 'the 1 2 3\nzebra 1 x 3\n')
  matrix, _ = embeddings.embedding_matrix(path, tokenizer(), 3)
  np.testing.assert_array_equal(matrix[1], [1, 2, 3])
  with pytest.raises(UserError, match="vectors.txt:2: the vector of 'zebra' holds a value"):
    embeddings.read_vectors(path)


def test_repeated_words_keep_their_first_vector_with_a_counted_warning(tmp_path, caplog):
  path = write(tmp_path, 'the 1 2 3\ncat 4 5 6\nthe 7 8 9\nthe 0 0 1\nzebra 1 1 1\nzebra 1 1 1\n')
  with caplog.at_level(logging.WARNING):
    matrix, coverage = embeddings.embedding_matrix(path, tokenizer(), 3)
  np.testing.assert_array_equal(matrix[1], [1, 2, 3])
  assert coverage.vectors.duplicates == 2  # zebra is not kept, so not counted
  assert ("2 repeats of a word skipped, each word keeps its first vector; the first: 'the' on "
          'lines 1 and 3') in caplog.text


def test_lines_with_more_fields_are_skipped_with_a_counted_warning(tmp_path, caplog):
  # glove.840B has words with spaces in them; a tokenizer that splits on spaces has none.
  path = write(tmp_path, '3 3\nthe 1 2 3\nnew york 4 5 6\ncat 7 8 9\n')
  with caplog.at_level(logging.WARNING):
    vectors = embeddings.read_vectors(path, dim=3)
  assert vectors.words == ['the', 'cat'] and vectors.skipped == 1
  np.testing.assert_array_equal(vectors.matrix, [[1, 2, 3], [7, 8, 9]])
  assert ('skipped 1 lines with more than a word and 3 numbers (words with spaces?), the first: '
          'line 3') in caplog.text


def test_nearest_ranks_by_cosine_and_skips_the_word_itself_and_zero_rows():
  matrix = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1], [-1, 0], [2, 0], [0, 0]], np.float32)
  results = embeddings.nearest(matrix, [1, 3], k=3)
  assert [row for row, _ in results[0]] == [5, 2, 3]
  np.testing.assert_allclose([s for _, s in results[0]], [1, 0.9 / np.sqrt(0.82), 0], atol=1e-6)
  assert [row for row, _ in results[1]] == [2, 1, 4]  # 1, 4 and 5 tie at 0: row order
  # Fewer candidates than k: every other non-zero row, never row 0 or 6.
  assert [row for row, _ in embeddings.nearest(matrix, [4], k=10)[0]] == [3, 2, 1, 5]


def test_unit_rows_leave_zero_rows_at_zero():
  units = embeddings.unit_rows(np.array([[3, 4], [0, 0]], np.float32))
  np.testing.assert_allclose(units, [[0.6, 0.8], [0, 0]])


def test_pca_finds_the_line_the_points_lie_on():
  t = np.array([-2.0, 0.5, 1.0, 4.0])
  points = np.outer(t, [1, 2, 2]) / 3 + [5, -1, 7]  # unit direction, offset
  coordinates = embeddings.pca_2d(points)
  assert coordinates.shape == (4, 2)
  np.testing.assert_allclose(coordinates[:, 0], t - t.mean(), atol=1e-5)
  np.testing.assert_allclose(coordinates[:, 1], 0, atol=1e-5)
  np.testing.assert_array_equal(embeddings.pca_2d(points[:1]), [[0, 0]])


def test_projector_files_are_tab_separated_with_a_header_only_for_metadata(tmp_path):
  vectors = np.array([[0.5, -1.25, 3e-8], [1, 2, 3]], np.float32)
  paths = embeddings.write_projector(tmp_path / 'out', ['cat', 'odd\tword'], [12, 3], vectors)
  assert paths == (tmp_path / 'out' / 'vectors.tsv', tmp_path / 'out' / 'metadata.tsv')
  rows = paths[0].read_text().splitlines()
  assert len(rows) == 2 and all(len(row.split('\t')) == 3 for row in rows)
  np.testing.assert_allclose([[float(x) for x in row.split('\t')] for row in rows], vectors,
                             rtol=1e-6)
  assert paths[1].read_text() == 'word\tcount\ncat\t12\nodd\\tword\t3\n'


MODEL = ModelConfig(embedding_dim=4, rnn_units=5, dense_units=6, trainable_embeddings=False)
WITHOUT_VECTOR = 3


def frozen_params(config: ModelConfig = MODEL):
  """WordRNN parameters whose embedding row WITHOUT_VECTOR (and 0) is zeros."""
  params = WordRNN(config, 8).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                                           deterministic=True)['params']
  embedding = params['embed']['embedding'].at[jnp.array([0, WITHOUT_VECTOR])].set(0.0)
  return params | {'embed': {'embedding': embedding}}


@pytest.mark.parametrize('mask_zero', [False, True])
def test_a_zero_vector_word_leaves_the_frozen_models_state_unchanged(mask_zero):
  config = dataclasses.replace(MODEL, mask_zero=mask_zero)
  params = frozen_params(config)
  tokens = np.array([[1, 2, 4, 5]])
  inserted = np.array([[1, 2, WITHOUT_VECTOR, 4, WITHOUT_VECTOR, 5]])
  apply = lambda config, t: WordRNN(config, 8).apply({'params': params}, t, deterministic=True)
  np.testing.assert_allclose(apply(config, inserted), apply(config, tokens), atol=1e-6)
  # Trainable embeddings have no mask: the zero vector is read like any other.
  trainable = dataclasses.replace(config, trainable_embeddings=True)
  assert np.abs(apply(trainable, inserted) - apply(trainable, tokens)).max() > 1e-4
  # The one-token-at-a-time decoder masks the same words.
  logits = []
  for sequence in (tokens[0], inserted[0]):
    state = None
    for token in sequence:
      state = WordRNN(config, 8).apply({'params': params}, jnp.int32([[token]]), state,
                                       method=WordRNN.read)
    logits.append(WordRNN(config, 8).apply({'params': params}, state, method=WordRNN.predict))
  np.testing.assert_allclose(logits[1], logits[0], atol=1e-6)


def test_frozen_pretrained_embeddings_stay_bit_identical_through_training(tmp_path):
  fitted = tokenizer()
  matrix, _ = embeddings.embedding_matrix(write(tmp_path, '\n'.join(glove_lines(VECTORS))),
                                          fitted, 3)
  batch = (jnp.array([[1, 3, 2, 5], [4, 7, 3, 3]], jnp.int32), jnp.array([2, 8], jnp.int32),
           jnp.ones(2))
  step = jax.jit(train.train_step)
  for trainable in (False, True):
    config = Config(data=DataConfig(training_length=4), train=TrainConfig(learning_rate=0.01),
                    model=ModelConfig(embedding_dim=3, rnn_units=4, dense_units=5,
                                      trainable_embeddings=trainable))
    state = train.create_train_state(config, fitted.vocab_size, matrix)
    before = jax.tree.map(np.array, state.params)
    for _ in range(2):
      state, _ = step(state, batch, jax.random.key(0))
    embedding = np.asarray(state.params['embed']['embedding'])
    assert not np.array_equal(state.params['lstm_0']['kernel'], before['lstm_0']['kernel'])
    if trainable:  # fine-tuned, as the walkthrough's trainable runs: words read in change
      assert not np.array_equal(embedding[[1, 2, 4]], matrix[[1, 2, 4]])
    else:
      np.testing.assert_array_equal(embedding, matrix)


def test_a_frozen_pretrained_run_trains_resumes_without_the_file_and_fails_cleanly(
    corpus, tmp_path):
  vectors = {word: np.full(8, i + 1.0) for i, word in enumerate(CYCLE) if word != 'eta'}
  path = write(tmp_path, '\n'.join(glove_lines(vectors)))
  config = tiny_config(corpus, max_epochs=1)
  config = dataclasses.replace(config, model=dataclasses.replace(
      config.model, trainable_embeddings=False, mask_zero=True, pretrained_embeddings=str(path)))
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match='vectors file not found'):
    train.train_and_evaluate(dataclasses.replace(config, model=dataclasses.replace(
        config.model, pretrained_embeddings=str(tmp_path / 'absent.txt'))), workdir)
  assert not workdir.exists()  # nothing written before the vectors were read
  train.train_and_evaluate(config, workdir)
  # The checkpoint holds the vectors: a resumed run does not read the file again.
  path.unlink()
  train.train_and_evaluate(config, workdir, resume=True)
  assert [m['epoch'] for m in read_metrics(workdir)] == [1]
  _, tokenizer, _, params = train.load(workdir)
  embedding = np.asarray(params['embed']['embedding'])
  for word, index in tokenizer.word_index.items():
    np.testing.assert_array_equal(embedding[index], vectors.get(word, np.zeros(8)))
