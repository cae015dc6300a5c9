"""Training engine: the fit loop and its helpers (checkpoints live in boxforge.checkpoint)."""
