"""Benchmarks of csra-posthoc; ``python -m benchmarks`` runs them all and writes benchmarks/RESULTS.md.

Each module also runs alone (``python -m benchmarks.<name>``). Figures are ratios measured in one
run (warm-up, then the median of repeats), so a busy machine slows both sides alike.
"""
