"""``method_search``: the method options of ``cpikan.methods`` against the preset on one PDE,
two objectives (error, seconds), so the weekly report shows which options buy accuracy and at
what cost (Pareto front).

Trial n runs option n mod (number of options that apply to the problem) with seed base + n
div that number: a study of 3 × that many trials is every option on three seeds, whatever
the sampler. The
``transfer`` option trains its source network (the same model on a nearby problem, e.g.
another wavenumber) in the trial; to start from a run already in the store instead, run the
PDE study with ``--set init_from=RUN_ID``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Any

from cpikan.config import canonical_json, choice, validate
from cpikan.experiment import PINNConfig, n_parameters, run_pinn
from cpikan.methods import METHODS, applicable, apply, source_weights
from cpikan.presets import PRESETS
from studies.pde import log_problem_files
from studies.registry import Study, register
from tracking.models import log_model

ENTRY_POINT = "studies.methods:run"


@dataclass
class MethodSearchConfig:
    base: PINNConfig = field(default_factory=lambda: copy.deepcopy(PRESETS["diffusion"]))
    method: str = choice("preset", tuple(METHODS))

    def __post_init__(self) -> None:
        if isinstance(self.base, dict):
            self.base = PINNConfig.from_dict(self.base)
        validate(self)

    def to_json(self) -> str:
        return canonical_json(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodSearchConfig:
        return cls(**d)


def run(config: MethodSearchConfig, ctx: Any) -> dict[str, float]:
    pinn = apply(config.base, config.method)
    log_problem_files(ctx, pinn)
    init_state, source_seconds = source_weights(pinn) if config.method == "transfer" else (None, 0.0)
    t0 = time.perf_counter()
    result, model, problem = run_pinn(pinn, [ctx.metrics_callback()], init_state=init_state)
    seconds = time.perf_counter() - t0
    results = {**result.metrics, "final_loss": result.loss, "params": float(n_parameters(model))}
    ctx.log_results(results, {"seconds": seconds, "source_seconds": source_seconds}, step=result.steps)
    ctx.set_tags({"cpikan.method": config.method})
    log_model(ctx, {"model": model, "problem": problem}, "studies.methods:build_model", config)
    return {**results, "seconds": seconds}


def build_model(config: MethodSearchConfig) -> Any:
    from cpikan.experiment import build

    return build(apply(config.base, config.method))[1]


def space(trial: Any, base: MethodSearchConfig) -> MethodSearchConfig:
    names = [m for m, why_not in applicable(base.base).items() if not why_not]
    method, rnd = names[trial.number % len(names)], trial.number // len(names)
    trial.set_user_attr("method", method)
    pinn = replace(base.base, train=replace(base.base.train, seed=base.base.train.seed + rnd))
    return replace(base, base=pinn, method=method)


register(Study("method_search", MethodSearchConfig, MethodSearchConfig, space,
               [("rel_l2", "minimize"), ("seconds", "minimize")], ENTRY_POINT,
               default_trials=sum(not why_not for why_not in applicable(MethodSearchConfig().base).values())))
