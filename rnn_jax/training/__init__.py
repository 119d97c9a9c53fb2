"""What the trainer stands on: the work dir, checkpoints, metrics, devices, signals, progress."""
