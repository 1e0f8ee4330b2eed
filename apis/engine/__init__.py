"""Training and inference engines: the trainer loop, checkpoints, distributed set-up, dataset inference."""
