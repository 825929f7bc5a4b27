"""Training: the trainer, its callbacks, the run folder's state, the cross-rank plumbing."""
