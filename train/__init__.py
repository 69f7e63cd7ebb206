"""Training: the ECM model, its losses, the trainer and checkpoints (needs torch)."""
