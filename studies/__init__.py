"""Studies on Optuna: `python -m studies.run NAME` (see ARCHITECTURE.md)."""
