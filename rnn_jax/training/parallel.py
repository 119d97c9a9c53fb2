"""Data parallelism with JAX's own sharding: one mesh over the devices of every process.

Batches are split along the mesh's `data` axis. Parameters and optimizer state are replicated,
or with `shard_params` the vocabulary-sized matrices (embedding, output layer, and their Adam
moments) are split along its `model` axis. The train and eval steps stay the same jitted
functions: the shardings of their inputs tell XLA where to run, and XLA inserts the gradient
all-reduce.

Across processes (`jax.distributed`) every process draws the same batch order (same seed) and
reads only its own rows of each batch; `jax.make_array_from_process_local_data` joins them into
the global batch.
"""

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from rnn_jax.errors import UserError

DATA, MODEL = 'data', 'model'
# The leaves with a vocabulary dimension, by their last two keys, and how `model` splits them.
_VOCAB_SPECS = {('logits', 'kernel'): P(None, MODEL), ('logits', 'bias'): P(MODEL),
                ('embed', 'embedding'): P(MODEL, None)}


def initialize(coordinator_address: str = '', num_processes: int | None = None,
               process_id: int | None = None):
  """Joins the other processes of a multi-host run; must come before any computation.

  coordinator_address: 'host:port' of process 0, 'auto' to let JAX read the cluster's
  environment (SLURM, TPU pods, ...), or '' to run alone.
  """
  if not coordinator_address:
    if num_processes is not None or process_id is not None:
      raise UserError('--num_processes and --process_id need --coordinator_address')
    return
  if coordinator_address == 'auto':
    jax.distributed.initialize()
    return
  if num_processes is None or process_id is None or not 0 <= process_id < num_processes:
    raise UserError(f'--coordinator_address {coordinator_address} needs --num_processes >= 1 '
                    f'and 0 <= --process_id < --num_processes, got {num_processes} and '
                    f'{process_id}')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process of the run; every process must ask at the same point."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def is_primary() -> bool:
  """Whether this process writes the work dir's files and logs (process 0 of a run)."""
  return jax.process_index() == 0


def _mesh(shape: tuple[int, int], devices: Sequence[jax.Device]) -> Mesh:
  # Auto axes: XLA propagates the inputs' shardings through the unchanged model code.
  return jax.make_mesh(shape, (DATA, MODEL), devices=devices,
                       axis_types=(AxisType.Auto, AxisType.Auto))


@dataclasses.dataclass(frozen=True)
class Parallel:
  """Where a step's inputs live: a mesh with axes (data, model)."""
  mesh: Mesh
  shard_params: bool = False

  @classmethod
  def create(cls, mesh_shape: Sequence[int] = (), shard_params: bool = False) -> 'Parallel':
    """mesh_shape: devices along (data,) or (data, model); () puts every device on data."""
    devices = jax.devices()
    shape = tuple(mesh_shape) or (len(devices),)
    if len(shape) == 1:
      shape += (1,)
    if len(shape) != 2 or min(shape) < 1:
      raise UserError(f'--mesh_shape is data[,model] device counts, got {list(mesh_shape)}')
    if shape[1] > 1 and not shard_params:
      raise UserError('a model axis (--mesh_shape=data,model with model > 1) only serves '
                      '--shard_params')
    used = math.prod(shape)
    if used > len(devices) or (jax.process_count() > 1 and used != len(devices)):
      every = ' (a mesh over several processes uses every device)' * (used < len(devices))
      raise UserError(f'--mesh_shape {",".join(map(str, shape))} needs {used} devices; there '
                      f'are {len(devices)}{every}')
    return cls(_mesh(shape, devices[:used]), shard_params)

  @staticmethod
  def barrier(name: str):
    """Waits until every process reaches here: before or after process 0 changes files that
    all of them read."""
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(name)

  @property
  def data_shards(self) -> int:
    return self.mesh.shape[DATA]

  @property
  def rows_sharding(self) -> NamedSharding:
    """Arrays with one row per sequence, split along `data` by their first axis."""
    return NamedSharding(self.mesh, P(DATA))

  def check_batch_size(self, batch_size: int, flag: str):
    if batch_size % self.data_shards:
      raise UserError(f'--{flag}={batch_size} does not divide over the {self.data_shards} data '
                      f'shards of the mesh; use a multiple of {self.data_shards}')

  def rows(self, batch_size: int) -> slice:
    """The rows of a global batch that this process's devices hold."""
    indices = self.rows_sharding.addressable_devices_indices_map((batch_size,)).values()
    starts = sorted({index[0].indices(batch_size)[:2] for index in indices})
    if any(stop != start for (_, stop), (start, _) in zip(starts, starts[1:])):
      raise UserError('this process holds rows of the batch that are not contiguous: build the '
                      'mesh with each process owning neighbouring data shards')
    return slice(starts[0][0], starts[-1][1])

  def batch(self, local: Sequence[np.ndarray], batch_size: int) -> tuple[jax.Array, ...]:
    """The global batch from this process's rows (`rows(batch_size)` of each array)."""
    return tuple(jax.make_array_from_process_local_data(
        self.rows_sharding, array, (batch_size, *array.shape[1:])) for array in local)

  def place(self, tree: Any) -> Any:
    """A train state (or any tree of arrays, the same on every process) put on the mesh:
    replicated, but for the vocabulary-sized leaves with shard_params."""
    def put(path, leaf):
      leaf = jnp.asarray(leaf)  # TrainState's step starts as a Python int
      sharding = NamedSharding(self.mesh, self._spec(path, leaf))
      # Built from this process's copy: device_put takes only shardings that it addresses whole.
      return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])
    return jax.tree_util.tree_map_with_path(put, tree)

  def _spec(self, path: tuple, leaf: Any) -> P:
    names = tuple(getattr(key, 'key', None) for key in path[-2:])
    spec = _VOCAB_SPECS.get(names) if self.shard_params else None
    if spec is None:
      return P()
    shards = self.mesh.shape[MODEL]
    size = leaf.shape[spec.index(MODEL)]
    if size % shards:
      raise UserError(f'--shard_params splits the vocabulary ({size} words) over {shards} '
                      'model shards, which does not divide it; choose another model axis, or a '
                      '--num_words that divides by it')
    return spec


def spread_rows(tree: Any, *rows: jax.Array) -> tuple[Any, tuple[jax.Array, ...]]:
  """For a computation on one process's devices, one row per sequence (generation): `tree`
  replicated and `rows` split along their first axis over every local device, the rows padded
  with copies of the first to a multiple of their number. On one device, all stay as they are."""
  devices = jax.local_devices()
  if len(devices) == 1:
    return tree, rows
  mesh = Parallel(_mesh((len(devices), 1), devices))
  pad = -len(rows[0]) % len(devices)
  padded = (jnp.concatenate([row, jnp.repeat(row[:1], pad, axis=0)]) for row in rows)
  return mesh.place(tree), tuple(jax.device_put(row, mesh.rows_sharding) for row in padded)
