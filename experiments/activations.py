"""Which neurons light up: the last recurrent layer's hidden state after each word of a text.

  python -m experiments.activations --workdir=DIR --text='A neural network is trained'

prints, for each word, the units with the largest |h| (h lies in [-1, 1]) and draws every unit
after every word as a heat map (words x units) into DIR/activations.png or --out. The heat map
needs matplotlib, the `plot` extra (pip install 'rnn-jax[plot]'); --noheatmap leaves it out.
"""

from pathlib import Path

from absl import flags
import jax.numpy as jnp
import numpy as np

from experiments import config_flags
from experiments import figures
from rnn_jax import train
from rnn_jax.configs import ModelConfig
from rnn_jax.corpus import seeds
from rnn_jax.errors import UserError
from rnn_jax.model.word_rnn import WordRNN

flags.DEFINE_string('workdir', None, 'The trained run to read the text with.', required=True)
config_flags.define_checkpoint_flag()
flags.DEFINE_string('text', None, 'The text to read.', required=True)
flags.DEFINE_integer('top_units', 5, 'Units shown per word, the most active first.',
                     lower_bound=1)
flags.DEFINE_bool('heatmap', True, 'Also draw the heat map PNG.')
flags.DEFINE_string('out', None, 'The heat map PNG; by default activations.png in the work dir.')
FLAGS = flags.FLAGS
HEATMAP = 'activations.png'


def main(argv):
  del argv
  # Checked before the model is read: a missing matplotlib or a bad --out fails at once.
  new_figure = figures.figure_maker('the heat map', '--noheatmap') if FLAGS.heatmap else None
  out = Path(FLAGS.out) if FLAGS.out else Path(FLAGS.workdir) / HEATMAP
  if new_figure and out.suffix.lower() != '.png':
    raise UserError(f'--out must name a .png file, not {out}')
  config, tokenizer, model, params = train.load(FLAGS.workdir, config_flags.checkpoint_from_flags())
  seed = seeds.from_text(FLAGS.text, tokenizer)
  words = [tokenizer.index_word[token] for token in seed.tokens]
  states = hidden_states(model, params, seed.tokens)
  embedding = np.asarray(params['embed']['embedding'])
  # A frozen model skips words without a vector: the state shown is the one carried over.
  masked = [not config.model.trainable_embeddings and not embedding[token].any()
            for token in seed.tokens]
  print(top_units_text(words, states, masked, FLAGS.top_units,
                       layer_name(config.model)))
  if seed.unknown:
    print(f'(not in the vocabulary, left out: {", ".join(seed.unknown)})')
  if new_figure:
    print(f'Wrote {draw_heatmap(new_figure, words, states, out)}')


def hidden_states(model: WordRNN, params, tokens: list[int]) -> np.ndarray:
  """f32[len(tokens), rnn_units]: the last recurrent layer's h after each token, as the model
  runs."""
  if model.config.bidirectional:
    raise UserError('activations reads unidirectional runs: a bidirectional layer gives only its '
                    'final states')
  _, outputs = model.apply({'params': params}, jnp.asarray([tokens], jnp.int32),
                           deterministic=True, every_position=True, method=WordRNN.encode)
  return np.asarray(outputs[:, 0])  # [time, batch = 1, units]: the model runs time first


def layer_name(config: ModelConfig) -> str:
  """The last recurrent layer, named for a reader: 'gru layer 2'."""
  return f'{config.cell} layer {config.rnn_layers}'



def top_units_text(words: list[str], states: np.ndarray, masked: list[bool], top: int,
                   layer: str) -> str:
  """A line per word: its `top` units by |h|, with their signed values."""
  units = states.shape[1]
  width = max(map(len, words))
  lines = [f'The {min(top, units)} most active of the {units} units of {layer} (largest |h|) '
           'after each word:']
  for word, h, skipped in zip(words, states, masked):
    order = np.argsort(-np.abs(h), kind='stable')[:top]
    line = '  '.join(f'u{unit} {h[unit]:+.2f}' for unit in order)
    lines.append(f'  {word:<{width}}  {line}' + ('  (no vector: skipped)' if skipped else ''))
  return '\n'.join(lines)


def draw_heatmap(new_figure, words: list[str], states: np.ndarray, out: Path) -> Path:
  """Draws f32[words, units] `states` as a words x units heat map into the PNG `out`."""
  units = states.shape[1]
  # Sized so that a word's row and a unit's column stay readable for long texts and wide layers.
  figure = new_figure(figsize=(max(6, 2 + 0.15 * units), 1.5 + 0.3 * len(words)),
                      layout='constrained')
  axes = figure.subplots()
  image = axes.imshow(states, cmap='RdBu_r', vmin=-1, vmax=1, aspect='auto',
                      interpolation='nearest')
  axes.set_yticks(range(len(words)), words)
  axes.set(xlabel='unit', title='hidden state h after each word')
  figure.colorbar(image, ax=axes, label='h')
  return figures.save(figure, out)


if __name__ == '__main__':
  config_flags.run(main)
