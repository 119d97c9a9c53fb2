"""rnn-jax: recurrent language models in JAX/Flax that learn to write text."""
