"""From cached statistics to results: the lam grid, selection, uncertainty, per-class and localisation analyses, ``run_sweep``."""
