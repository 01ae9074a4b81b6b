"""Hyper-parameter searches on the PINN core: schedulers × learning rate, initialisation ×
Chebyshev degree."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

from cpikan.config import bounded, choice, validate
from cpikan.experiment import ModelConfig, PINNConfig, run_pinn
from cpikan.nn import INITS
from cpikan.train import TrainConfig
from cpikan.train.config import SCHEDULERS
from studies.pde import ENTRY_POINT, Report
from studies.registry import Study, register


def scheduler_base() -> PINNConfig:
    """helmholtz1d at a budget where the scheduler matters (Adam only, evaluated every 100)."""
    return PINNConfig("helmholtz1d", {"n_interior": 200},
                      ModelConfig(hidden=(16, 16), degree=8, dtype="float64"),
                      TrainConfig(adam_steps=1500, lr=1e-2, eval_every=100,
                                  loss_weights={"pde": 1.0, "bc": 10.0, "bc_flux": 10.0}))


def scheduler_space(trial: Any, base: PINNConfig) -> PINNConfig:
    sched = trial.suggest_categorical("scheduler", list(SCHEDULERS))
    lr = trial.suggest_float("lr", 1e-4, 5e-2, log=True)
    return replace(base, train=replace(base.train, scheduler=sched, lr=lr))


register(Study("scheduler_search", PINNConfig, scheduler_base, scheduler_space,
               [("rel_l2", "minimize")], ENTRY_POINT, pruner="median", default_trials=12))


@dataclass
class InitSearchConfig:
    init: str = choice("xavier", INITS)
    degree: int = bounded(5, ge=1, le=64)
    hidden: tuple[int, ...] = (8, 8)
    adam_steps: int = bounded(800, ge=1)
    lr: float = bounded(1e-2, gt=0)
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        validate(self)
        self.hidden = tuple(int(h) for h in self.hidden)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InitSearchConfig:
        return cls(**d)


def init_configs(cfg: InitSearchConfig) -> dict[str, PINNConfig]:
    model = ModelConfig(hidden=cfg.hidden, degree=cfg.degree, init=cfg.init, dtype="float64")
    train = TrainConfig(adam_steps=cfg.adam_steps, lr=cfg.lr, scheduler="exponential", seed=cfg.seed,
                        eval_every=max(cfg.adam_steps // 4, 1))
    return {
        "helmholtz1d": PINNConfig("helmholtz1d", {"n_interior": 200}, copy.deepcopy(model),
                                  replace(train, loss_weights={"pde": 1.0, "bc": 10.0, "bc_flux": 10.0})),
        "diffusion": PINNConfig("diffusion", {"n_interior": 1000, "n_boundary": 200, "n_initial": 200},
                                copy.deepcopy(model), replace(train, loss_weights={"pde": 0.01, "ic": 1.0, "bc": 1.0})),
    }


def run_init(config: InitSearchConfig, ctx: Any) -> dict[str, float]:
    """Both problems with the same initialisation and degree; one result per problem."""
    results = {}
    for name, cfg in init_configs(config).items():
        res, _, _ = run_pinn(cfg, [ctx.metrics_callback(prefix=f"{name}/"), Report(ctx)])
        results[f"rel_l2_{name}"] = res.metrics["rel_l2"]
        results[f"final_loss_{name}"] = res.loss
    ctx.log_results(results)
    return results


def init_space(trial: Any, base: InitSearchConfig) -> InitSearchConfig:
    return replace(base, init=trial.suggest_categorical("init", list(INITS)),
                   degree=trial.suggest_int("degree", 3, 8))


register(Study("init_search", InitSearchConfig, InitSearchConfig, init_space,
               [("rel_l2_helmholtz1d", "minimize"), ("rel_l2_diffusion", "minimize")],
               "studies.searches:run_init", default_trials=8))
