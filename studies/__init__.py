"""Studies on Optuna: `python -m studies.run NAME` (see docs/architecture.md)."""
