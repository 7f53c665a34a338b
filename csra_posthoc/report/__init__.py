"""Results for people and scripts: terminal tables, JSON, comparisons across runs, figures."""
