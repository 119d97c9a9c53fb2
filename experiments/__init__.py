"""Entry points. Importing the package tunes the host allocator before jax starts."""

from rnn_jax import allocator

allocator.keep_freed_memory()
