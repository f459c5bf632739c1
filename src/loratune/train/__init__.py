"""Training: the loop and its utilities (checkpoints, precision, metrics logging, plots, progress, memory)."""
