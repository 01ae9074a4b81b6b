"""The plots of a study, built once: on the study's parent run (HTML artifacts) and in the
weekly report. Optuna's own plots where they read well; several objectives as parallel
coordinates (a 3-D scatter of four objectives is unreadable)."""

from __future__ import annotations

from typing import Any


def objectives_figure(study: Any, names: list[str]) -> Any:
    """Every complete trial as a line across its objectives; the Pareto front in colour."""
    import plotly.graph_objects as go

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    front = {t.number for t in study.best_trials}
    dims = [dict(label=n, values=[t.values[i] for t in complete]) for i, n in enumerate(names)]
    colour = [1.0 if t.number in front else 0.0 for t in complete]
    fig = go.Figure(go.Parcoords(line=dict(color=colour, colorscale=[[0, "#c8c8c8"], [1, "#d62728"]]),
                                 dimensions=dims))
    fig.update_layout(title=f"{study.study_name}: {len(front)} of {len(complete)} trials on the Pareto front (red)",
                      template="plotly_white", height=380, margin=dict(t=60, b=30))
    return fig


def study_plots(study: Any, names: list[str] | None = None) -> list[tuple[str, Any]]:
    """(title, plotly figure) pairs; empty when the study has no complete trial."""
    import optuna

    vis = optuna.visualization
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return []
    multi = len(study.directions) > 1
    names = names or [f"objective {i}" for i in range(len(study.directions))]
    out: list[tuple[str, Any]] = []
    if multi and len(names) == 2:
        out.append(("Pareto front", vis.plot_pareto_front(study, target_names=names)))
    elif multi:
        out.append(("objectives (parallel coordinates)", objectives_figure(study, names)))
    else:
        fig = vis.plot_optimization_history(study, target_name=names[0])
        best = study.best_trial
        fig.update_layout(title=f"{study.study_name}: best {names[0]} = {best.value:.3g} (trial {best.number})")
        out.append(("optimisation history", fig))
    if len(complete) >= 3 and len(complete[0].params) > 1:
        fig = vis.plot_param_importances(study, target=(lambda t: t.values[0]) if multi else None,
                                         target_name=names[0])
        fig.update_layout(title=f"{study.study_name}: which parameters move {names[0]}")
        out.append(("parameter importances", fig))
        fig = vis.plot_parallel_coordinate(study, target=(lambda t: t.values[0]) if multi else None,
                                           target_name=names[0])
        out.append(("parameters (parallel coordinates)", fig))
    return out
