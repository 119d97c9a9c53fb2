"""Text generation from a trained model: the batched, jitted generator."""
