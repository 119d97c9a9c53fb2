"""seed_pretrained with a generated vectors file, and the inspection commands on its run: nearest
words, the Embedding Projector export and the neuron activations, run as a user runs them."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from rnn_jax.corpus.text import Tokenizer
from rnn_jax.training import checkpoints

from conftest import CYCLE

REPO = Path(__file__).parents[1]
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
DIM = 8
NO_VECTOR = 'eta'  # a corpus word the vectors file lacks


def run(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', f'experiments.{module}', *args], cwd=REPO,
                        capture_output=True, text=True)


def assert_png(path: Path):
  data = path.read_bytes()
  assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000


@pytest.fixture(scope='module')
def vectors(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
  """A GloVe file: the corpus words but one, among words the corpus does not have."""
  rng = np.random.default_rng(0)
  words = [w for w in CYCLE if w != NO_VECTOR] + [f'filler{i}' for i in range(20)]
  table = {word: rng.normal(size=DIM).astype(np.float32) for word in rng.permutation(words)}
  path = tmp_path_factory.mktemp('vectors') / 'vectors.txt'
  path.write_text(''.join(f'{w} {" ".join(map(repr, map(float, v)))}\n' for w, v in table.items()))
  return path, table


@pytest.fixture(scope='module')
def pretrained(corpus, vectors, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp('pretrained')
  result = run('train', '--flagfile=experiments/configs/seed_pretrained.flags', f'--data={corpus}',
               f'--pretrained_embeddings={vectors[0]}', f'--embedding_dim={DIM}',
               '--rnn_units=8', '--dense_units=16', '--training_length=4', '--min_extra_words=0',
               '--batch_size=64', '--max_epochs=1', '--learning_rate=0.03', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  assert 'Pre-trained embeddings: 7 of 8 words have a vector' in result.stderr
  assert f'most frequent without one: {NO_VECTOR} (' in result.stderr
  config = json.loads((workdir / checkpoints.CONFIG).read_text())
  assert config['pretrained_embeddings'] == str(vectors[0])
  assert not config['trainable_embeddings'] and config['mask_zero'] and config['lower']
  return workdir


def expected_neighbours(table: dict[str, np.ndarray], word: str, k: int) -> list[str]:
  others = [w for w in table if w != word]
  cosine = [table[w] @ table[word] / np.linalg.norm(table[w]) / np.linalg.norm(table[word])
            for w in others]
  return [others[i] for i in np.argsort(cosine)[::-1][:k]]


def test_neighbors_of_a_run_and_of_a_file_with_the_walkthroughs_messages(pretrained, vectors):
  path, table = vectors
  in_run = {w: v for w, v in table.items() if w in CYCLE}
  result = run('neighbors', f'--workdir={pretrained}', f'--words=Alpha,{NO_VECTOR},omega',
               '--k=3')
  assert result.returncode == 0, result.stderr
  blocks = result.stdout.strip().split('\n\n')
  assert blocks[0].splitlines()[0] == "Nearest to 'Alpha' (cosine similarity):"
  assert [line.split()[0] for line in blocks[0].splitlines()[1:]] == expected_neighbours(
      in_run, 'alpha', 3)
  assert blocks[1:] == [f'{NO_VECTOR} has no pre-trained embedding.', 'omega not found in vocab.']

  result = run('neighbors', f'--vectors={path}', '--words=alpha,eta', '--k=5')
  assert result.returncode == 0, result.stderr
  blocks = result.stdout.strip().split('\n\n')
  assert [line.split()[0] for line in blocks[0].splitlines()[1:]] == expected_neighbours(
      table, 'alpha', 5)
  assert blocks[1] == 'eta not found in vocab.'


def test_export_projector_writes_the_frozen_vectors_and_a_map(pretrained, vectors, tmp_path):
  tokenizer = Tokenizer.from_json((pretrained / checkpoints.TOKENIZER).read_text())
  result = run('export_projector', f'--workdir={pretrained}', '--top_n=100', f'--out={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert 'Exported 7 words (1 without a vector left out)' in result.stdout
  words = [w for w in sorted(tokenizer.word_index, key=tokenizer.word_index.get) if w != NO_VECTOR]
  metadata = (tmp_path / 'metadata.tsv').read_text().splitlines()
  assert metadata == ['word\tcount'] + [f'{w}\t{tokenizer.word_counts[w]}' for w in words]
  rows = [[float(x) for x in line.split('\t')]
          for line in (tmp_path / 'vectors.tsv').read_text().splitlines()]
  # Trained with the embedding frozen: still the file's vectors.
  np.testing.assert_allclose(rows, [vectors[1][w] for w in words], rtol=1e-6)
  assert_png(tmp_path / 'map.png')


def test_activations_shows_each_words_top_units_and_a_heat_map(pretrained, tmp_path):
  out = tmp_path / 'heat.png'
  result = run('activations', f'--workdir={pretrained}', '--text=alpha beta omega eta gamma',
               '--top_units=3', f'--out={out}')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == ('The 3 most active of the 8 units of lstm layer 1 (largest |h|) after '
                      'each word:')
  rows = {line.split()[0]: line.split()[1:] for line in lines[1:5]}
  assert list(rows) == ['alpha', 'beta', 'eta', 'gamma']
  assert all(len(row) == 6 for word, row in rows.items() if word != 'eta')
  # eta has no vector: the frozen model skips it and its state is beta's.
  assert rows['eta'] == rows['beta'] + ['(no', 'vector:', 'skipped)']
  assert lines[5] == '(not in the vocabulary, left out: omega)'
  assert_png(out)
