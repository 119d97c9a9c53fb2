"""Draws a run's metrics.jsonl: loss and accuracy per epoch, training beside validation.

  python -m experiments.plot --workdir=DIR
  python -m experiments.plot --workdir=DIR --out=curves.png

Needs matplotlib, the `plot` extra: pip install 'rnn-jax[plot]'.
"""

import json
from pathlib import Path

from absl import flags

from experiments import config_flags
from experiments import figures
from rnn_jax.errors import UserError
from rnn_jax.training import checkpoints

flags.DEFINE_string('workdir', None, 'The run whose metrics to draw.', required=True)
flags.DEFINE_string('out', None, 'The PNG to write; by default metrics.png in the work dir.')
FLAGS = flags.FLAGS

SPLITS = (('train', 'training', 'C0'), ('val', 'validation', 'C1'))  # key prefix, label, colour
# Per panel, the metrics it draws: key suffix, label suffix, line style. A record's key is
# prefix_suffix (val_top5_accuracy); keys a run did not record are left out.
PANELS = {'loss': (('loss', '', '-'),),
          'accuracy': (('accuracy', '', '-'), ('top5_accuracy', ' top-5', '--'))}
PLOTTED = {f'{prefix}_{suffix}' for prefix, _, _ in SPLITS
           for lines in PANELS.values() for suffix, _, _ in lines}
PANEL_SIZE = (5.5, 4)  # inches


def main(argv):
  del argv
  print(f'Wrote {plot_metrics(FLAGS.workdir, FLAGS.out)}')


def plot_metrics(workdir: str | Path, out: str | Path | None = None) -> Path:
  """Draws workdir's metrics.jsonl into a PNG (workdir/metrics.png by default); returns its path."""
  workdir = Path(workdir)
  out = Path(out) if out else workdir / 'metrics.png'
  if out.suffix.lower() != '.png':
    raise UserError(f'--out must name a .png file, not {out}')
  records = read_metrics(workdir / checkpoints.METRICS)
  figure = _draw(records, workdir.absolute().name)
  return figures.save(figure, out)


def read_metrics(path: Path) -> list[dict]:
  """The epoch records, checked line by line so that a bad line is named, not a traceback."""
  try:
    lines = path.read_text().splitlines()
  except FileNotFoundError:
    raise UserError(f'{path.parent} holds no {path.name}: is it a training work dir?') from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'cannot read {path}: {e}') from None
  # Blank lines are skipped: a hand-edited file may end with one.
  records = [_record(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
  if not records:
    raise UserError(f'{path} is empty: no epoch has finished yet')
  if not any(PLOTTED & record.keys() for record in records):
    raise UserError(f'{path} holds no loss or accuracy to draw')
  return records


def _record(path: Path, number: int, line: str) -> dict:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f'{path}, line {number}: not JSON ({e.msg})') from None
  if not isinstance(record, dict) or type(record.get('epoch')) is not int:
    raise UserError(f'{path}, line {number}: not an epoch record (an object with an integer '
                    '"epoch")')
  for key in sorted(PLOTTED & record.keys()):
    if type(record[key]) not in (int, float):
      raise UserError(f'{path}, line {number}: {key} is not a number: {record[key]!r}')
  return record


def _draw(records: list[dict], title: str):
  """A figure with one panel per entry of PANELS."""
  new_figure = figures.figure_maker('plotting')
  # pylint: disable-next=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator, PercentFormatter  # present: figure_maker checked
  figure = new_figure(figsize=(PANEL_SIZE[0] * len(PANELS), PANEL_SIZE[1]), layout='constrained')
  figure.suptitle(title)
  for axes, (panel, lines) in zip(figure.subplots(1, len(PANELS)), PANELS.items()):
    for suffix, label_suffix, style in lines:
      for prefix, label, colour in SPLITS:
        _line(axes, records, f'{prefix}_{suffix}', label + label_suffix, colour, style)
    axes.set(xlabel='epoch', ylabel=panel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
    if panel == 'accuracy':
      axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    axes.grid(alpha=0.3)
    if axes.lines:  # a legend of nothing only draws a warning
      axes.legend()
  return figure


def _line(axes, records: list[dict], key: str, label: str, colour: str, style: str):
  points = [(record['epoch'], record[key]) for record in records if key in record]
  if points:
    epochs, values = zip(*points)
    # Markers: a run of one epoch is a single point, which a bare line would not show.
    axes.plot(epochs, values, style, color=colour, marker='o', markersize=3, label=label)


if __name__ == '__main__':
  config_flags.run(main)
