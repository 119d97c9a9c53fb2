"""One absl flag per Config field, named after it; its help is the field's comment."""

import dataclasses
import inspect
import logging as std_logging
import re
import sys

from absl import app
from absl import flags
from absl import logging

from rnn_jax import allocator
from rnn_jax.configs import Config
from rnn_jax.errors import UserError

ESCAPED = ('filters',)  # read with backslash escapes (\t, \n, \\), as in a Python string
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def _comments(cls) -> dict[str, str]:
  pattern = re.compile(r'^\s+(\w+): [^#]*#\s*(.*)$')
  return dict(m.groups() for m in map(pattern.match, inspect.getsource(cls).splitlines()) if m)


def _fields():
  """(field, comment) of every hyperparameter, in Config.flat() order."""
  for section in dataclasses.fields(Config):
    if dataclasses.is_dataclass(section.type):
      comments = _comments(section.type)
      yield from ((f, comments[f.name]) for f in dataclasses.fields(section.type))
    else:
      yield section, _comments(Config)[section.name]


def define_config_flags():
  for field, comment in _fields():
    default = field.default
    if field.name in ESCAPED:
      default = default.encode('unicode_escape').decode('ascii')
      comment += r' (with Python escapes: \t, \n, \\)'
    _DEFINE[field.type](field.name, default, comment)


def config_from_flags() -> Config:
  values = {name: flags.FLAGS[name].value for name in Config().flat()}
  for name in ESCAPED:
    values[name] = values[name].encode('latin-1', 'backslashreplace').decode('unicode_escape')
  return Config.from_flat(values)


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
  """Orbax logs every save at INFO through absl; keep only its warnings."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def run(main, *, generates: bool = False):
  """app.run, with bad input reported on one line instead of a traceback.

  Tunes the host allocator first, before jax starts its threads, for training or, when the entry
  point `generates` text, for generation (see `rnn_jax.allocator`).
  """
  allocator.keep_freed_memory(one_arena=not generates)
  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    logging.get_absl_handler().addFilter(_quiet_orbax)
    try:
      return main(argv)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  app.run(guarded)
