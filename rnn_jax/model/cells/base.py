"""The interface every recurrent cell implements, and the generic recurrence over time.

A cell says what one step does; `layers.RNN` does everything around it (input projection,
dropout masks, masking, direction, time-major layout) for any cell. The split of work:

  the layer   projects each input once: x = inputs @ params['kernel'] (f32[..., width]), so that
              it can project a table's rows once instead of each step, apply input dropout
              before, and run that big matmul in bfloat16;
  the cell    creates its parameters (with at least that 'kernel'), says what its state is
              (any pytree whose leaves have the batch first) and how one step turns
              (state, x) into the next state, which part of the state is the output h, and
              which of its parameters are recurrent weights (what weight drop drops).

`scan` runs any cell over time as a plain `lax.scan`, differentiated by autodiff. A cell may
override `run` with a fused fast path (the LSTM does); `tests/test_cells.py` holds every such
path equal to `scan`, values and gradients.
"""

import abc
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax.typing import Dtype

Array = jax.Array
State = Any  # a pytree of f32[*batch, ...] arrays
Params = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class Cell(abc.ABC):
  """A recurrent cell: parameters, state and one step (frozen, so a layer can hold it).

  Attributes:
    units: width of the output h (and of the recurrent dropout mask applied to it).
  """
  units: int
  recurrent_weights = ('recurrent_kernel',)  # parameters applied to h: weight drop's targets

  @property
  @abc.abstractmethod
  def width(self) -> int:
    """Width of the input projection x = inputs @ kernel that `step` reads."""

  @abc.abstractmethod
  def create_params(self, param: Callable[..., Array], features: int) -> Params:
    """The cell's parameters, created with `param(name, init, shape)` (a Flax module's `param`).

    Returns a dict that holds at least 'kernel': f32[features, width], the input projection,
    which the layer applies.
    """

  @abc.abstractmethod
  def initial_state(self, batch_shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> State:
    """The state before the first step: zeros of shape [*batch_shape, ...]."""

  @abc.abstractmethod
  def step(self, params: Params, state: State, x: Array, recurrent_mask: Array) -> State:
    """One step.

    Args:
      params: what `create_params` made.
      state: the state before the step, batch f32[batch, ...].
      x: f32[batch, width], the step's projected input (inputs @ kernel, no bias).
      recurrent_mask: f32[batch, units], multiplies h where it enters the recurrent matmul
        (dropout; ones for none).

    Returns:
      The state after the step.
    """

  @abc.abstractmethod
  def output(self, state: State) -> Array:
    """The output h of a state: f32[*batch, units]."""

  def run(self, params: Params, rows: Array, ids: Array | None, recurrent_mask: Array,
          step_mask: Array, state: State, reverse: bool) -> tuple[State, Array]:
    """The cell over time; `scan` unless a cell brings a fused path. Arguments as in `scan`."""
    return scan(self, params, rows, ids, recurrent_mask, step_mask, state, reverse)


def scan(cell: Cell, params: Params, rows: Array, ids: Array | None, recurrent_mask: Array,
         step_mask: Array, state: State, reverse: bool) -> tuple[State, Array]:
  """Runs `cell` over time with `lax.scan`; its gradient is autodiff's.

  Args:
    cell: the cell.
    params: its parameters.
    rows: f32[n, width], projected table rows of which `ids` picks each step's; or, without
      ids, f32[batch, time, width], every step's projected input (batch-major, so that a batch
      split over devices stays split).
    ids: int32[time, batch], the row each step reads; or None.
    recurrent_mask: f32[batch, units], see `Cell.step`. It gets no gradient.
    step_mask: f32[time, batch, 1]: 1 reads the step, 0 carries the state over it unchanged.
    state: the initial state.
    reverse: read time from last to first; outputs stay aligned with inputs.

  Returns:
    (the state after the last step read, h after every step: f32[time, batch, units]).
  """
  recurrent_mask = jax.lax.stop_gradient(recurrent_mask)

  def step(state, xs):
    ids_t, read = xs
    new = cell.step(params, state, rows_at(rows, ids_t), recurrent_mask)
    new = jax.tree.map(lambda n, o: jnp.where(read > 0, n, o), new, state)
    return new, cell.output(new)

  return jax.lax.scan(step, state, (step_ids(rows, ids), step_mask), reverse=reverse)


def step_ids(rows: Array, ids: Array | None) -> Array:
  """What each step reads rows by: the ids, or its time index when rows are per step."""
  return jnp.arange(rows.shape[1]) if ids is None else ids


def rows_at(rows: Array, ids_t: Array) -> Array:
  """One step's projected inputs, f32[batch, width]: rows picked by id, or the step's."""
  if ids_t.ndim:
    return rows[ids_t]
  return jax.lax.dynamic_index_in_dim(rows, ids_t, axis=1, keepdims=False)
