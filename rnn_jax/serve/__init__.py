"""A trained model behind a server: request checks, micro-batching, the pages and API, the game."""
