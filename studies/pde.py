"""PDE benchmark studies and their entry point ``run(config, ctx)``.

``run`` is recorded on every PDE run (``studies.pde:run``), so
``python -m tracking.replay RUN_ID`` re-executes exactly this function. Evaluations during
training are reported to the study (intermediate values, pruning).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cpikan import refs
from cpikan.experiment import PINNConfig, build, n_parameters, run_pinn
from cpikan.pde import PROBLEMS, make_problem
from cpikan.pde.check import check_problem
from cpikan.presets import PRESETS
from cpikan.train import Callback
from studies.registry import Study, names_in, register
from tracking.models import log_model, part, read_run

ENTRY_POINT = "studies.pde:run"


class Report(Callback):
    """Evaluations → ``ctx.report`` (logged; fed to the pruner inside a study)."""

    def __init__(self, ctx: Any, metric: str = "rel_l2") -> None:
        self.ctx, self.metric, self.last = ctx, metric, -1

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.metric in metrics and step != self.last:  # the final evaluation repeats the last step
            self.last = step
            self.ctx.report(step, metrics[self.metric])


def run(config: PINNConfig, ctx: Any) -> dict[str, float]:
    """Train, evaluate and log: step metrics, results, the model and a convergence figure.
    (The lab's own problem, ``FILE.py:CLASS``, is recorded by content by the tracker.)"""
    log_problem_files(ctx, config)
    init_state = None
    if config.init_from:  # transfer learning: the source run's trained network (safetensors)
        init_state = part(read_run(config.init_from)[1], "model")
        ctx.set_tags({"cpikan.init_from": config.init_from})
    t0 = time.perf_counter()
    result, model, problem = run_pinn(config, [ctx.metrics_callback(), Report(ctx)], init_state=init_state)
    seconds = time.perf_counter() - t0
    results = dict(result.metrics)
    results.update(final_loss=result.loss, steps=float(result.steps),
                   nan_events=float(result.nan_events), params=float(n_parameters(model)))
    ctx.log_results(results, {"seconds": seconds, "steps_per_second": result.steps / max(seconds, 1e-9)},
                    step=result.steps)
    log_model(ctx, {"model": model, "problem": problem}, "studies.pde:build_model", config)
    if problem.time_dependent:
        ctx.log_figure(error_over_time_figure(*problem.error_over_time(model)), "figures/error_over_time.html")
    return results


def error_over_time_figure(times: torch.Tensor, error: torch.Tensor) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=times.tolist(), y=error.tolist(), mode="lines+markers", name="relative L2"))
    fig.update_layout(title="relative L2 error over time (at the points rel_l2 is measured at)", xaxis_title="t",
                      yaxis_title="relative L2 error", yaxis_type="log", template="plotly_white")
    return fig


def log_problem_files(ctx: Any, config: PINNConfig) -> None:
    """The data files a run's problem reads, by sha256, before it trains: a replay, a model
    rebuilt from the store and a resumed study check them. Every problem argument that names
    a file (observations, a reference solution, whatever a lab's class calls it) is one; a
    lab's own problem is built to find a reference its code names itself."""
    files = [v for v in config.problem_kwargs.values() if isinstance(v, str) and v and Path(v).is_file()]
    if refs.is_ref(config.problem):
        files.append(make_problem(config.problem, **config.problem_kwargs).reference_file)
    named = {Path(f).name: str(Path(f).resolve()) for f in files if f}
    if named:
        ctx.log_datasets(named)


def build_model(config: PINNConfig) -> torch.nn.Module:
    """The untrained network of ``config`` (the builder recorded with its weights): a marched
    one's windows when it marches."""
    problem, model = build(config)
    if config.time_windows > 1:
        from cpikan.marching import marched_skeleton

        return marched_skeleton(config, problem)
    return model


def next_seed(trial: Any, base: PINNConfig) -> PINNConfig:
    """Each trial of a PDE benchmark is the preset with the next seed (the success rate
    over seeds is read from these trials)."""
    return replace(base, train=replace(base.train, seed=base.train.seed + trial.number))


def problem_builds(config: PINNConfig) -> None:
    """The problem is built and tried on a few points once before any run (the user's own
    too: their command line): a wrong ``problem_kwargs`` name or value, or a residual of the
    wrong shape, is one line, not a failed trial per retry."""
    try:
        problem, model = build(config)
    except (TypeError, OSError) as exc:  # an argument the problem does not take; a data file it cannot read
        raise ValueError(f"problem_kwargs: {exc}") from None
    check_problem(problem, model)


def benchmark_check(name: str) -> Any:
    """A benchmark study keeps its problem as its KPI defines it: the same class and the same
    arguments but those that choose the method (``Problem.method_kwargs``: points, sampler)."""
    preset = PRESETS[name]

    def check(config: PINNConfig) -> None:
        problem_builds(config)  # first: a misspelt argument is named as such
        instead = f"run another problem as python -m studies.run pinn --set problem={name} --set problem_kwargs=…"
        if config.problem != preset.problem:
            raise ValueError(f"problem: the {name} study runs {preset.problem!r} only (its KPI reads its runs); "
                             f"another PDE: python -m studies.run pinn --set problem=…")
        given, own = config.problem_kwargs, preset.problem_kwargs
        free = PROBLEMS[preset.problem].method_kwargs
        for key in sorted(set(given) | set(own)):
            if key not in free and given.get(key) != own.get(key):
                raise ValueError(f"problem_kwargs.{key}: defines the {name} benchmark's problem (its KPI reads its "
                                 f"runs; {', '.join(free)} may change); {instead}")

    return check


for _name in names_in(__name__):
    register(Study(
        name=_name, config_cls=PINNConfig, default=lambda n=_name: copy.deepcopy(PRESETS[n]),
        space=next_seed, objectives=[("rel_l2", "minimize")], entry_point=ENTRY_POINT, default_trials=1,
        check=problem_builds if _name == "pinn" else benchmark_check(_name),
    ))
