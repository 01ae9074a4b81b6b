"""``multistage_search``: stage count, stage width/degree, Fourier σ rule and point growth
of multi-stage training (cpikan.multistage), two objectives (error, seconds), so the weekly
report shows the accuracy/time front.

Each trial is one run: per-stage metrics (``stage_rel_l2``, ``stage_residual``,
``stage_scale``, ``stage_frequency`` with step = stage), the residual spectrum each stage
was given and the residual tracker (every stage's training loss) as figures.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from cpikan.multistage import MultiStageConfig, StageResult, train_multistage
from cpikan.pde import PROBLEMS
from cpikan.presets import PRESETS
from studies.pde import log_problem_files
from studies.registry import Study, register


def default() -> MultiStageConfig:
    base = PRESETS["helmholtz1d"]
    return MultiStageConfig(replace(base, train=replace(base.train, lm_solver="svd")), stages=3, hidden=(8,),
                            degree=16, lm_steps=300, points_factor=2.0)


def run(cfg: MultiStageConfig, ctx: Any) -> dict[str, float]:
    stages: list[StageResult] = []

    def on_stage(s: StageResult) -> None:
        stages.append(s)
        ctx.log_metrics({"stage_rel_l2": s.rel_l2, "stage_residual": s.residual_rms, "stage_scale": s.scale,
                         "stage_frequency": s.frequency, "stage_seconds": s.seconds}, step=s.stage)

    log_problem_files(ctx, cfg.base)
    t0 = time.perf_counter()
    train_multistage(cfg, on_stage=on_stage)
    seconds = time.perf_counter() - t0
    kept = [s for s in stages if s.kept]  # a stage that made the residual worse was removed
    last = kept[-1]
    results = {"rel_l2": last.rel_l2, "rel_l2_single_stage": stages[0].rel_l2, "residual": last.residual_rms,
               "stages_used": float(len(kept))}
    ctx.log_results(results, {"seconds": seconds})
    ctx.log_figure(_spectra(stages), "figures/residual_spectra.html")
    ctx.log_figure(_tracker(stages), "figures/residual_tracker.html")
    return {**results, "seconds": seconds}


def _spectra(stages: list[StageResult]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=s.spectrum[0][1:], y=s.spectrum[1][1:], mode="lines",
                                name=f"given to stage {s.stage} (peak {s.frequency:.1f})")
                     for s in stages if len(s.spectrum[0]) > 1])
    fig.update_layout(title="PDE residual spectrum each stage was given", xaxis_title="cycles per unit of x̂",
                      yaxis_title="power", yaxis_type="log", template="plotly_white")
    return fig


def _tracker(stages: list[StageResult]) -> Any:
    import plotly.graph_objects as go

    fig, offset = go.Figure(), 0
    for s in stages:
        fig.add_scatter(x=list(range(offset, offset + len(s.losses))), y=list(s.losses), mode="lines",
                        name=f"stage {s.stage}: rel_l2 {s.rel_l2:.1e}")
        offset += len(s.losses)
    fig.update_layout(title="Residual tracker: training loss per stage", xaxis_title="step", yaxis_title="loss",
                      yaxis_type="log", template="plotly_white")
    return fig


def space(trial: Any, base: MultiStageConfig) -> MultiStageConfig:
    stages = trial.suggest_int("stages", 1, 4)
    if trial.suggest_categorical("stage_kind", ["network", "spectral"]) == "spectral":
        degree = trial.suggest_categorical("spectral_degree", [32, 64, 128])
        dims = len(PROBLEMS[base.base.problem].coords)
        return replace(base, stages=min(stages, 2), stage_kind="spectral", spectral_degrees=(degree,) * dims,
                       spectral_basis="total")
    width = trial.suggest_categorical("width", [8, 16])
    ff = trial.suggest_categorical("fourier_features", [0, 8])
    return replace(base, stages=stages, hidden=(width,),
                   degree=trial.suggest_categorical("degree", [8, 12, 16]), fourier_features=ff,
                   points_factor=trial.suggest_categorical("points_factor", [1.0, 2.0]))


register(Study("multistage_search", MultiStageConfig, default, space,
               [("rel_l2", "minimize"), ("seconds", "minimize")], "studies.multistage:run", default_trials=6))
