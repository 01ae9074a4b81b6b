"""Shared bits of the report CLIs: the run lookup with one-line errors."""

from __future__ import annotations

from typing import Any

from tracking import store
from tracking.store import TrackingError


def get_run(run_id: str) -> tuple[Any, Any]:
    """(client, run); TrackingError with a one-line message for an unknown ID."""
    from mlflow.exceptions import MlflowException

    client = store.client(must_exist=True)
    try:
        return client, client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"run ID {run_id!r}: no such run in {store.tracking_uri()}") from None
