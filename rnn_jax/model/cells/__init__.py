"""Recurrent cells by name: `--cell=NAME` picks one (`base.Cell` says what a cell provides).

A new cell is one file in this folder and one line in `CELLS`.
"""

from rnn_jax.model.cells import base
from rnn_jax.model.cells import gru
from rnn_jax.model.cells import lstm

CELLS: dict[str, type[base.Cell]] = {
    'lstm': lstm.LSTMCell,
    'gru': gru.GRUCell,
}
