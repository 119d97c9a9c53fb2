"""One absl flag per Config field, named after it; its help is the field's comment."""

import dataclasses
import inspect
import logging as std_logging
from pathlib import Path
import re
import sys

from absl import app
from absl import flags
from absl import logging
import jax

from rnn_jax.configs import Config, RENAMED
from rnn_jax.errors import UserError
from rnn_jax.training import allocator
from rnn_jax.training import parallel
from rnn_jax.training import preemption

CONFIGS = Path(__file__).parent / 'configs'  # the flagfiles that ship with the package
TRAIN_ONLY = ('samples', 'sample_words', 'temperature')  # what training flagfiles may add
ESCAPED = ('filters',)  # read with backslash escapes (\t, \n, \\), as in a Python string
# What one command may generate: beyond these a run takes minutes and gigabytes. The server's
# limits are tighter (rnn_jax.serve.serving.Limits).
MAX_WORDS = 10_000  # words (characters at level char) per continuation
MAX_ROWS = 1_024  # continuations generated at once: seeds x samples x beam width
MAX_RNG_SEED = 2**32 - 1  # the server's range too
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


def typed_config_fields() -> list[str]:
  """The Config fields whose flags the command line (or a flagfile on it) sets."""
  return [name for name in Config().flat() if flags.FLAGS[name].present]


def config_from_flags() -> Config:
  values = {name: flags.FLAGS[name].value for name in Config().flat()}
  for name in ESCAPED:
    values[name] = values[name].encode('latin-1', 'backslashreplace').decode('unicode_escape')
  return Config.from_flat(values)


def define_checkpoint_flag():
  """--checkpoint, for the commands that read a trained run."""
  # A string rather than an enum: a step number is a checkpoint too.
  flags.DEFINE_string('checkpoint', 'best', "Which checkpoint of the run: 'best' (lowest "
                      "validation loss), 'latest', or a step (the names in WORKDIR/checkpoints).")


def checkpoint_from_flags() -> str | int:
  """'best', 'latest' or a step; anything else is refused where the run is read."""
  which = flags.FLAGS.checkpoint
  return int(which) if which.isascii() and which.isdigit() else which


def define_parallel_flags():
  """Where training runs: a mesh of devices, and the processes of a multi-host run."""
  flags.DEFINE_list('mesh_shape', [], 'Devices along the mesh axes data[,model]; default: every '
                    'device on data. The batch size must divide by data.')
  flags.DEFINE_bool('shard_params', False, "Split the vocabulary-sized matrices (embedding, "
                    "output layer) over the mesh's model axis instead of replicating them.")
  flags.DEFINE_string('coordinator_address', '', "host:port of process 0 in a run over several "
                      "processes (jax.distributed); 'auto' reads a cluster's environment (SLURM, "
                      "TPU pods).")
  flags.DEFINE_integer('num_processes', None, 'Processes in the run, with --coordinator_address.',
                       lower_bound=1)
  flags.DEFINE_integer('process_id', None, "This process's index, from 0, with "
                       '--coordinator_address.', lower_bound=0)


def parallel_from_flags() -> parallel.Parallel:
  """Joins the other processes, when there are any, then builds the mesh; before any other
  computation. Processes other than 0 log errors only."""
  parallel.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                      flags.FLAGS.process_id)
  if not parallel.is_primary():
    logging.set_verbosity(logging.ERROR)
  try:
    shape = [int(size) for size in flags.FLAGS.mesh_shape]
  except ValueError:
    raise UserError(f'--mesh_shape takes device counts, got {",".join(flags.FLAGS.mesh_shape)}'
                    ) from None
  return parallel.Parallel.create(shape, flags.FLAGS.shard_params)


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
  """Orbax logs every save at INFO through absl: keep only its warnings that say something.

  Dropped: its warning at each save without metrics (those inside an epoch, by design), and the
  tracebacks it logs when a background write fails (a full disk): the failure is raised again in
  the main thread and reported there on one line. A checkpoint that does not read back fails
  every array's read at once: asyncio logs each failure orbax did not collect, after the one
  that `checkpoints.restore_latest` reports.
  """
  if record.name == 'asyncio':
    return 'exception was never retrieved' not in record.getMessage()
  if '/orbax/' not in record.pathname:
    return True
  return (record.levelno >= std_logging.WARNING and not record.exc_info
          and 'did not provide metrics' not in record.getMessage())


def run(main, *, generates: bool = False, ignores: tuple[str, ...] = ()):
  """app.run, with bad input reported on one line instead of a traceback.

  Tunes the host allocator first, before jax starts its threads, for training or, when the entry
  point `generates` text, for generation (see `rnn_jax.training.allocator`). Flags named in
  `ignores` are accepted and left alone (absl's --undefok): another entry point's flags in a
  shared flagfile.
  """
  allocator.keep_freed_memory(one_arena=not generates)
  # jax probes for a TPU on every start and logs its absence: noise a user cannot act on.
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)

  def guarded(argv):
    if len(argv) > 1:
      _exit(f'unexpected arguments: {" ".join(argv[1:])} (every setting is a --flag)')
    logging.get_absl_handler().addFilter(_quiet_orbax)
    try:
      return main(argv)
    except UserError as e:
      _exit(e)
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      _exit(_out_of_memory(e))
    except preemption.Stopped as e:
      print(e, file=sys.stderr)
      sys.exit(e.exit_code)

  try:
    argv = expand_flagfiles(sys.argv)
  except UserError as e:
    _exit(e)
  if ignores:
    argv.append(f'--undefok={",".join(ignores)}')
  app.run(guarded, argv=argv, flags_parser=_parse_flags)


def _out_of_memory(error: jax.errors.JaxRuntimeError) -> str:
  size = re.search(r'allocating (\d+) bytes', str(error))
  need = f'{int(size.group(1)) / 2**30:.1f} GiB at once, ' if size else ''
  return (f'out of memory on {jax.devices()[0].platform}: this needs {need}more than is free; '
          'use a smaller model or batch (--rnn_units, --embedding_dim, --batch_size, '
          '--num_samples)')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with an unknown flag or a bad value reported on one line."""
  for arg in argv[1:]:
    name = re.match(r'--(\w+)', arg)
    if name and name.group(1) in RENAMED:
      _exit(f'--{name.group(1)} is now --{RENAMED[name.group(1)]}')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit(' '.join(str(e).split()))  # some of absl's messages span lines


def _exit(error: Exception | str):
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def expand_flagfiles(argv: list[str], base: Path | None = None, depth: int = 0) -> list[str]:
  """argv with every --flagfile=PATH replaced by the flags in the file, recursively.

  absl reads a flagfile named inside another relative to the current directory; here it is
  found next to the file that names it first, so flagfiles work from any directory. A path
  found nowhere else is looked up among the flagfiles that ship with the package.
  """
  if depth > 20:
    raise UserError('flagfiles include each other in a loop')
  expanded = []
  for arg in argv:
    match = re.fullmatch(r'--flagfile=(.+)', arg)
    if not match:
      expanded.append(arg)
      continue
    path = _find_flagfile(match.group(1), base)
    lines = [line.strip() for line in _read_flagfile(path).splitlines()]
    flags_in_file = [line for line in lines if line and not line.startswith(('#', '//'))]
    expanded += expand_flagfiles(flags_in_file, path.parent, depth + 1)
  return expanded


def _read_flagfile(path: Path) -> str:
  try:
    content = path.read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise UserError(f'flagfile {path} is not UTF-8 text (byte {e.start})') from None
  except OSError as e:
    raise UserError(f'cannot read flagfile {path}: {e.strerror}') from None
  if '\0' in content:
    raise UserError(f'flagfile {path} holds a NUL byte: is it a text file?')
  return content


def _find_flagfile(name: str, base: Path | None) -> Path:
  candidates = [base / name] if base else []
  candidates += [Path(name), CONFIGS / Path(name).name]
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  raise UserError(f'flagfile not found: {name}')
