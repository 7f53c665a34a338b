"""One forward pass per image: runtime settings, backends, the batch loop, per-class statistics, probe features."""
