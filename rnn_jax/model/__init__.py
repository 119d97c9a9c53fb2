"""The models: recurrent cells (cells/), the layers that run them, WordRNN, the n-gram baseline."""
