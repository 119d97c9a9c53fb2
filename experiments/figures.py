"""PNG figures for the entry points, drawn with matplotlib, the optional `plot` extra."""

from pathlib import Path
from typing import Callable

from rnn_jax.errors import UserError


def figure_maker(purpose: str, skip_flag: str = '') -> Callable[..., object]:
  """A function that makes matplotlib Figures drawing on an Agg canvas; checked before any work.

  matplotlib is imported here, only when a figure is wanted. Figures on their own Agg canvas
  leave the caller's pyplot backend (a notebook's, say) as it was.
  """
  try:
    # pylint: disable=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
  except ImportError:
    skip = f', or pass {skip_flag}' if skip_flag else ''
    raise UserError(f"{purpose} needs matplotlib: pip install 'rnn-jax[plot]'{skip}") from None

  def new_figure(**kwargs) -> Figure:
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure

  return new_figure


def save(figure, out: Path) -> Path:
  """Writes the figure to `out`; a path that cannot be written is one line, not a traceback."""
  try:
    figure.savefig(out)
  except OSError as e:
    raise UserError(f'cannot write {out}: {e.strerror}') from None
  return out
