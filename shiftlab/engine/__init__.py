"""The shared training loop, its optimisers, callbacks and checkpoints."""
