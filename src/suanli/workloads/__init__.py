"""Built-in workloads: real training and serving jobs the platform runs (need PyTorch)."""
