"""Quiet by default: the CLIs show progress bars and a short summary; library chatter
(MLflow's and alembic's INFO lines, Optuna's experimental-feature and plotting notes) only
with ``-v``. Warnings raised about the user's own data or model are not touched."""

from __future__ import annotations

import logging
import os
import warnings

LIBRARY_LOGGERS = ("mlflow", "alembic", "optuna", "optuna_dashboard", "urllib3", "matplotlib")
#: library notes that say nothing about the user's data or model
LIBRARY_NOTES = (
    r"`target` is specified, but `target_name` is the default value",
    r"PedAnovaImportanceEvaluator computes the importances",
    r".*is experimental \(supported from v",
)


def configure(verbose: bool = False) -> None:
    """Set the libraries' verbosity for this process (and the processes it starts)."""
    level = logging.INFO if verbose else logging.WARNING
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if verbose:
        os.environ["CPIKAN_VERBOSE"] = "1"
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # a tracking server's "🏃 View run … at" and "🧪 View experiment at" lines, two per run
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for pattern in LIBRARY_NOTES:
        warnings.filterwarnings("ignore", message=pattern)
    try:  # Optuna's own experimental-feature class, where it is installed
        import optuna

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


def from_environment() -> None:
    """Child processes (workers) follow the parent's ``-v``."""
    configure(os.environ.get("CPIKAN_VERBOSE") == "1")
