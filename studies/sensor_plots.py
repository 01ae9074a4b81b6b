"""The plots of ``studies.place_sensors``: where the sensors are, and error against K."""

from __future__ import annotations

import math
from typing import Any


def sensor_map(family: Any, placement: Any) -> Any:
    """Where the sensors are, over how much the first field varies between snapshots (its
    standard deviation): a heat map on a grid, a scatter of (at most 50 000) mesh points."""
    import numpy as np
    import plotly.graph_objects as go

    name, snaps = next(iter(family.fields.items()))
    std = np.asarray(snaps, np.float64).std(0)
    coords, idx = family.coordinates(), list(placement.indices)
    labels = [f"sensor {s + 1}" for s in range(len(idx))]
    marks = dict(mode="markers+text", text=[str(s + 1) for s in range(len(idx))], textposition="top center",
                 hovertext=labels, marker=dict(size=11, color="#d62728", line=dict(width=1, color="white")),
                 name="sensors")
    if family.grid is not None:
        traces = [go.Heatmap(z=std.reshape(family.grid), colorscale="Viridis", colorbar=dict(title=f"std {name}")),
                  go.Scatter(x=coords[idx, 1].tolist(), y=coords[idx, 0].tolist(), **marks)]
        axes = dict(xaxis_title="col", yaxis_title="row", yaxis=dict(scaleanchor="x", autorange="reversed"))
    else:
        keep = np.random.default_rng(0).permutation(len(std))[:50_000] if len(std) > 50_000 else slice(None)
        c = coords if coords.shape[1] > 1 else np.c_[coords, np.zeros(len(coords))]
        scatter = go.Scatter3d if c.shape[1] == 3 else go.Scatter
        xyz = ("x", "y", "z")[: c.shape[1]]
        traces = [scatter(**{a: c[keep, i] for i, a in enumerate(xyz)}, mode="markers", name=f"std {name}",
                          marker=dict(size=3 if c.shape[1] == 3 else 5, color=std[keep], colorscale="Viridis",
                                      colorbar=dict(title=f"std {name}")), hoverinfo="skip"),
                  scatter(**{a: c[idx, i].tolist() for i, a in enumerate(xyz)}, **marks)]  # lists: readable in the page
        axes = dict(xaxis_title=family.axes()[0], yaxis=dict(scaleanchor="x")) if c.shape[1] == 2 else {}
    fig = go.Figure(traces)
    fig.update_layout(title=f"{len(idx)} sensors ({placement.method}) over the snapshots' spread of {name}",
                      template="plotly_white", showlegend=False, **axes)
    return fig


def error_vs_k(summary: dict[str, Any]) -> Any:
    """Each method's held-out error against K (a sweep's summary), the guard's red line across."""
    import plotly.graph_objects as go

    from cpikan.sensors.guard import load_thresholds

    fig = go.Figure([go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=m,
                                customdata=[p[2] for p in pts], hovertemplate="K=%{x}: %{y:.3g} (rank %{customdata})")
                     for m, pts in summary["sweep"].items()])
    red = load_thresholds().red["reconstruction_error"]
    fig.add_hline(y=red, line_dash="dot", line_color="#d62728")
    fig.add_annotation(x=1, xref="paper", y=math.log10(red), text="guard's red line", showarrow=False,  # log axis: log10
                       xanchor="right", yanchor="bottom", font=dict(color="#d62728"))
    fig.update_layout(title=f"held-out error of the linear estimate vs sensors ({summary['held_out']} of "
                      f"{summary['snapshots']} snapshots withheld, {100 * summary['noise']:g} % noise)",
                      xaxis_title="sensors K", yaxis_title="relative error (1 = the mean field)", yaxis_type="log",
                      template="plotly_white")
    return fig
