"""Scaled-cPIKAN solver core: models, PDE problems, derivatives, losses, sampling, trainer.

This package knows nothing of MLflow or Optuna: the layers above observe it through
plain callbacks (see :mod:`cpikan.train.callbacks`).
"""

__version__ = "0.1.0"
