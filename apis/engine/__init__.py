"""Training: the trainer loop, checkpoints, distributed set-up and transforms."""
