"""Prints the nearest words by cosine similarity: in a run's embedding matrix or a vectors file.

  python -m experiments.neighbors --workdir=DIR --words=neural,network,the --k=10
  python -m experiments.neighbors --vectors=glove.6B.100d.txt --words=neural,network
"""

from absl import flags
import numpy as np

from experiments import config_flags
from rnn_jax import train
from rnn_jax.corpus import embeddings
from rnn_jax.errors import UserError

flags.DEFINE_string('workdir', None, 'The trained run whose embedding matrix to search.')
config_flags.define_checkpoint_flag()
flags.DEFINE_string('vectors', None, 'A GloVe or word2vec text file to search instead; a relative '
                    'name is also looked up in $RNN_JAX_DATA_DIR.')
flags.DEFINE_list('words', None, 'The query words, comma separated.', required=True)
flags.DEFINE_integer('k', 10, 'Neighbours per word.', lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if (FLAGS.workdir is None) == (FLAGS.vectors is None):
    raise UserError('give --workdir or --vectors (one of them)')
  words, matrix, lookup = _from_run() if FLAGS.workdir else _from_file()
  print(neighbours_text(words, matrix, [lookup(word) for word in FLAGS.words], FLAGS.words,
                        FLAGS.k))


def _from_run():
  """(words by row, f32[vocab, dim] matrix, query word -> row or None) of a trained run."""
  _, tokenizer, _, params = train.load(FLAGS.workdir, config_flags.checkpoint_from_flags())
  matrix = np.array(params['embed']['embedding'], np.float32)
  matrix[0] = 0  # padding is no word: zero rows are nobody's neighbour
  words = [''] + [tokenizer.index_word[i] for i in range(1, len(matrix))]

  def lookup(word: str) -> int | None:
    row = tokenizer.word_index.get(word.lower() if tokenizer.lower else word)
    return row if row is not None and row < len(matrix) else None

  return words, matrix, lookup


def _from_file():
  """(words by row, f32[n, dim] matrix, query word -> row or None) of a vectors file."""
  vectors = embeddings.read_vectors(embeddings.vectors_path(FLAGS.vectors))
  rows = {word: row for row, word in enumerate(vectors.words)}
  return vectors.words, vectors.matrix, rows.get


def neighbours_text(words: list[str], matrix: np.ndarray, rows: list[int | None],
                    queries: list[str], k: int) -> str:
  """A block per query; the walkthrough's messages for unknown words and zero vectors."""
  known = [row for row in rows if row is not None and matrix[row].any()]
  found = dict(zip(known, embeddings.nearest(matrix, known, k)))
  blocks = []
  for query, row in zip(queries, rows):
    if row is None:
      blocks.append(f'{query} not found in vocab.')
    elif row not in found:
      blocks.append(f'{query} has no pre-trained embedding.')
    else:
      width = max(len(words[i]) for i, _ in found[row]) if found[row] else 0
      lines = [f'  {words[i]:<{width}}  {similarity:.4f}' for i, similarity in found[row]]
      blocks.append('\n'.join([f'Nearest to {query!r} (cosine similarity):', *lines]))
  return '\n\n'.join(blocks)


if __name__ == '__main__':
  config_flags.run(main)
