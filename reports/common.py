"""Shared bits of the report CLIs: the run lookup with one-line errors, and which runs measure."""

from __future__ import annotations

from typing import Any

from tracking import store
from tracking.links import TAG_REPLAY_OF


def measured(runs: list[Any]) -> list[Any]:
    """The runs that measure something: a replay re-runs another run to check it (perhaps
    with that run's old code), so it adds no point to a KPI, a median or a "latest" row."""
    return [r for r in runs if TAG_REPLAY_OF not in r.data.tags]


def get_run(run_id: str) -> tuple[Any, Any]:
    """(client, run), by ID or its start; TrackingError with a one-line message for an unknown ID."""
    client = store.client(must_exist=True)
    return client, store.get_run(client, run_id)
