"""Entry points: thin programs around the rnn_jax library."""
