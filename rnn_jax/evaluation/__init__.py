"""Scoring trained runs: beside the baselines, mixed with the n-gram, with a continuous cache."""
