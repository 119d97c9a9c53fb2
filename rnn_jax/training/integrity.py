"""Checksums saved in a checkpoint's progress, so that a damaged checkpoint is never restored.

Orbax checks only the arrays of 1 KiB or less (compressed), which it stores inside its OCDBT
index nodes, whose checksums tensorstore checks. A larger array lies outside them, zstd-compressed
without zstd's checksum (orbax's zarr3 option would checksum only a shard index; orbax 0.12.8
offers nothing more), and a garbled byte there was restored without a word. So the progress
records a checksum of every array of the train state, taken on the device when the checkpoint is
saved, and one of itself, since orbax's JSON files carry none either. A checkpoint saved before
them has neither, and restores unchecked.
"""

import json
from typing import Any
import zlib

import jax
import jax.numpy as jnp

ARRAYS = 'array_checksums'
PROGRESS = 'progress_checksum'
# Two lanes of 32 bits: random garbage passes unnoticed once in 2**64.
_LANES = (0x9E3779B9, 0x7F4A7C15)


class ChecksumError(ValueError):
  """A checkpoint that differs from the checksums saved with it."""


def seal(progress: dict[str, Any], state: Any) -> dict[str, Any]:
  """`progress` with the checksums of the state's arrays and of itself.

  Its one device_get, of two numbers an array, waits for the step that computes the state, as
  orbax's own copy to the host does: no new wait.
  """
  sealed = progress | {ARRAYS: checksums(state)}
  return sealed | {PROGRESS: _crc(sealed)}


def check_progress(progress: dict[str, Any]):
  """Raises ChecksumError when the progress was changed after it was saved."""
  if PROGRESS in progress and progress[PROGRESS] != _crc(progress):
    raise ChecksumError('its progress differs from the checksum saved with it')


def check_arrays(progress: dict[str, Any], state: Any):
  """Raises ChecksumError, naming the first array, when the restored state is not the one saved."""
  saved = progress.get(ARRAYS)
  if saved is None:
    return
  restored = checksums(state)
  for path in sorted(saved.keys() | restored.keys()):
    if saved.get(path) != restored.get(path):
      raise ChecksumError(f'{path} differs from the checksum saved with it')


def checksums(state: Any) -> dict[str, str]:
  """Each array's checksum in hex, by its path in the state: one small transfer to the host."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(state)[0])
  sums = jax.device_get(_checksums(leaves))
  return {jax.tree_util.keystr(path, simple=True, separator='/'): ''.join(
      f'{int(lane):08x}' for lane in lanes) for path, lanes in zip(paths, sums)}


@jax.jit
def _checksums(leaves: tuple[jax.Array, ...]) -> list[jax.Array]:
  return [_checksum(leaf) for leaf in leaves]


def _checksum(leaf: jax.Array) -> jax.Array:
  """uint32[2]: in each lane, the sum of mix(word ^ mix(index + lane)) over the array's words.

  mix is a bijection, so a change in a single word (a flipped bit) always changes the sum; the
  index in it makes the order count. Integer sums wrap and do not depend on the order they are
  taken in, so a sharded array sums as it does whole.
  """
  words = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f'uint{8 * leaf.dtype.itemsize}'))
  words = words.astype(jnp.uint32).ravel()
  index = jnp.arange(words.size, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(_mix(words ^ _mix(index + jnp.uint32(lane))), dtype=jnp.uint32)
                    for lane in _LANES])


def _mix(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: every input bit moves about half the output bits."""
  x ^= x >> 16
  x *= jnp.uint32(0x85EBCA6B)
  x ^= x >> 13
  x *= jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _crc(progress: dict[str, Any]) -> int:
  """Of all but itself: a resumed run's progress still holds the checksum it was read with."""
  rest = {key: value for key, value in progress.items() if key != PROGRESS}
  return zlib.crc32(json.dumps(rest, sort_keys=True).encode())
