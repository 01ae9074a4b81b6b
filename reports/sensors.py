"""The sensor studies in the weekly report: reconstruction error against sensor count K,
one line per placement method (median over the runs at each K), for ``sensor_placement``
(the linear POD estimate) and ``flow_inverse`` (the physics-informed network)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from reports.common import measured

#: (experiment, the param naming the placement, title)
PANELS = (("studies/sensor_placement", "method", "sensor_placement: POD estimate error vs K"),
          ("studies/flow_inverse", "placement", "flow_inverse: (u, v, p) error vs K"))


def error_vs_k(client: Any, experiment: str, method_param: str) -> dict[str, list[tuple[int, float]]]:
    """{method: [(K, median rel_l2)] sorted by K} over the experiment's finished runs."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = measured(client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000))
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in runs:
        method, k, err = r.data.params.get(method_param), r.data.params.get("k"), r.data.metrics.get("rel_l2")
        if method is not None and k is not None and err is not None:
            groups[(method, int(k))].append(err)
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (method, k), errs in sorted(groups.items()):
        out[method].append((k, statistics.median(errs)))
    return dict(out)


def figures(client: Any) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go

    out = []
    for experiment, param, title in PANELS:
        lines = error_vs_k(client, experiment, param)
        if not lines:
            continue
        fig = go.Figure([go.Scatter(x=[k for k, _ in pts], y=[e for _, e in pts], mode="lines+markers", name=m)
                         for m, pts in lines.items()])
        fig.update_layout(title=title, xaxis_title="sensors K", yaxis_title="relative L2 (median)",
                          yaxis_type="log", height=320, template="plotly_white", margin=dict(t=40, b=30))
        out.append((title, fig))
    return out


GUARDED_EXPERIMENT = "studies/flow_inverse"


def guard_rows(client: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The latest ``flow_inverse`` runs' physics-guard figures, newest first: per run its flow,
    placement, K and, per check, (value or None, status: green | yellow | red | n/a)."""
    from cpikan.sensors.guard import CHECKS

    exp = client.get_experiment_by_name(GUARDED_EXPERIMENT)
    if exp is None:
        return []
    runs = measured(client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                       order_by=["attributes.start_time DESC"], max_results=limit + 50))[:limit]
    out = []
    for r in runs:
        tag = r.data.tags.get("guard.status")
        if not tag:
            continue
        status = dict(item.split("=", 1) for item in tag.split(","))
        p = r.data.params
        out.append({"run_id": r.info.run_id, "experiment_id": r.info.experiment_id,
                    "flow": p.get("flow", "kovasznay"), "placement": p.get("placement", ""), "k": p.get("k", ""),
                    "checks": {c: (r.data.metrics.get(f"guard/{c}"), status.get(c, "n/a")) for c in CHECKS}})
    return out
