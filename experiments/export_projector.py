"""Exports a run's word vectors for the TensorFlow Embedding Projector, and draws a 2-D map.

  python -m experiments.export_projector --workdir=DIR --top_n=5000 --out=DIR2

writes DIR2/vectors.tsv and DIR2/metadata.tsv (load both at https://projector.tensorflow.org/)
and DIR2/map.png: the most frequent words placed by PCA. The map needs matplotlib, the `plot`
extra (pip install 'rnn-jax[plot]'); --nomap leaves it out.
"""

from pathlib import Path

from absl import flags
import numpy as np

from experiments import config_flags
from experiments import figures
from rnn_jax import train
from rnn_jax.corpus import embeddings
from rnn_jax.errors import UserError

flags.DEFINE_string('workdir', None, 'The trained run whose embedding matrix to export.',
                    required=True)
config_flags.define_checkpoint_flag()
flags.DEFINE_integer('top_n', 5000, 'Export the most frequent words, this many (words without '
                     'a vector, all zeros, are left out).', lower_bound=1)
flags.DEFINE_string('out', None, 'The folder to write into.', required=True)
flags.DEFINE_bool('map', True, 'Also draw map.png, a PCA map of the words.')
flags.DEFINE_integer('map_words', 150, 'Words named on the map (the most frequent); the rest of '
                     'the exported words are dots.', lower_bound=0)
FLAGS = flags.FLAGS
MAP = 'map.png'
MAP_SIZE = (12, 10)  # inches


def main(argv):
  del argv
  # Checked before anything is written: a missing matplotlib is no half-done export.
  new_figure = figures.figure_maker('the map', '--nomap') if FLAGS.map else None
  _, tokenizer, _, params = train.load(FLAGS.workdir, config_flags.checkpoint_from_flags())
  matrix = np.asarray(params['embed']['embedding'], np.float32)
  rows = top_rows(matrix, FLAGS.top_n)
  if not rows:
    raise UserError(f'no word of {FLAGS.workdir} has a vector: its embedding matrix is all zeros')
  words = [tokenizer.index_word[row] for row in rows]
  counts = [tokenizer.word_counts.get(word, 0) for word in words]
  left_out = min(FLAGS.top_n, len(matrix) - 1) - len(rows)
  paths = embeddings.write_projector(FLAGS.out, words, counts, matrix[rows])
  if new_figure:
    paths += (draw_map(new_figure, words, matrix[rows], FLAGS.map_words,
                       Path(FLAGS.out) / MAP),)
  print(f'Exported {len(rows):,} words' + (f' ({left_out:,} without a vector left out)'
                                            if left_out else ''))
  print('\n'.join(f'Wrote {path}' for path in paths))


def top_rows(matrix: np.ndarray, top_n: int) -> list[int]:
  """The ids of the top_n most frequent words (ids rank words by count) whose vector is not zero."""
  rows = np.arange(1, min(top_n, len(matrix) - 1) + 1)
  return [int(row) for row in rows[matrix[rows].any(axis=1)]]


def draw_map(new_figure, words: list[str], vectors: np.ndarray, named: int,
             out: Path) -> Path:
  """Draws the words of f32[n, dim] `vectors` on their first two principal components.

  Rows are scaled to length 1 first, so that the map shows directions, as cosine neighbours do.
  """
  points = embeddings.pca_2d(embeddings.unit_rows(vectors))
  figure = new_figure(figsize=MAP_SIZE, layout='constrained')
  axes = figure.subplots()
  axes.scatter(points[:, 0], points[:, 1], s=4, color='0.7', linewidths=0)
  for word, (x, y) in zip(words[:named], points[:named]):
    axes.annotate(word, (x, y), fontsize=8, ha='center', va='center')
  axes.set(title=f'{len(words):,} most frequent words, PCA of the unit vectors',
           xlabel='first principal component', ylabel='second principal component')
  return figures.save(figure, out)


if __name__ == '__main__':
  config_flags.run(main)
