"""Best runs and the links between stages (pretrain → sweep, coarse → fine).

``best_run`` asks MLflow's own search (ordered by the metric, optionally filtered);
``auto_link`` records on both runs that the next stage started from the best one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tracking import store

TAG_REPLAY_OF = "replay_of"  # tracking.replay's tag (its module imports the tracker; this one need not)

DIRECTIONS = ("min", "max")


def best_run(experiment: str, metric: str, direction: str = "min", filter_string: str = "",
             accept: Callable[[Any], bool] | None = None) -> Any | None:
    """The finished run of ``experiment`` with the best ``metric`` (among those ``accept``
    takes, when given: a condition a filter string cannot say), or None when there is none.
    Replays are not candidates: a link names the run that measured, not its re-run."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: unknown {direction!r}; allowed: {', '.join(DIRECTIONS)}")
    client = store.client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    flt = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    order = "ASC" if direction == "min" else "DESC"
    runs = client.search_runs([exp.experiment_id], filter_string=flt,
                              order_by=[f"metrics.`{metric}` {order}"], max_results=1000)
    runs = [r for r in runs if metric in r.data.metrics and TAG_REPLAY_OF not in r.data.tags
            and (accept is None or accept(r))]
    return runs[0] if runs else None


def auto_link(source_run_id: str, target_run_id: str, *, role: str, metric: str | None = None) -> None:
    """Tag ``target`` with where it started from, and list ``target`` on ``source``."""
    client = store.client()
    client.set_tag(target_run_id, f"link.{role}", source_run_id)
    if metric:
        client.set_tag(target_run_id, f"link.{role}.selected_by", metric)
    src = client.get_run(source_run_id)
    used_by = json.loads(src.data.tags.get("link.used_by", "[]"))
    if target_run_id not in used_by:
        used_by.append(target_run_id)
    client.set_tag(source_run_id, "link.used_by", json.dumps(used_by))
