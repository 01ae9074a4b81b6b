"""A PINN experiment as one dataclass: problem + model + trainer settings, and ``run_pinn``.

This is the single entry point the benchmarks, the studies and replay drive, so a config
recorded anywhere rebuilds the same run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cpikan import refs
from cpikan.config import ConfigError, bounded, canonical_json, choice, validate
from cpikan.nn import INITS, MLP, ScaledCPIKAN, ScaledModel
from cpikan.nn.base import DTYPES
from cpikan.nn.chebykan import BASES, SQUASHES
from cpikan.pde import PROBLEMS, Problem, make_problem
from cpikan.pde.check import check_problem
from cpikan.train import Callback, TrainConfig, Trainer, TrainResult, seed_everything

MODEL_KINDS = ("cpikan", "mlp")


@dataclass
class ModelConfig:
    kind: str = choice("cpikan", MODEL_KINDS)
    hidden: tuple[int, ...] = (8, 8)
    degree: int = bounded(5, ge=1, le=64)
    squash: str = choice("tanh", SQUASHES)
    layernorm: bool = False
    init: str = choice("xavier", INITS)
    dtype: str = choice("float32", tuple(DTYPES))
    fourier_features: int = bounded(0, ge=0)
    fourier_sigma: float = bounded(1.0, gt=0)
    basis: str = choice("chebyshev", BASES)  # cpikan only: Chebyshev or wavelet KAN layers
    #: impose the problem's u = 0 faces exactly (u = Π(1 − x̂_j²)·N) instead of by a loss term
    hard_bc: bool = False

    def __post_init__(self) -> None:
        validate(self)
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError("hidden", f"one or more layer widths ≥ 1, got {self.hidden}")


@dataclass
class PINNConfig:
    #: one of ours by name, or the lab's own: ``path/to/burgers.py:Burgers`` (docs/howto.md)
    problem: str = choice("helmholtz1d", tuple(PROBLEMS), refs="a cpikan.pde.Problem subclass")
    problem_kwargs: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threads: int = bounded(0, ge=0)  # 0: leave torch's default
    #: transfer learning: the run whose trained network starts this one (same architecture,
    #: e.g. another wavenumber). A run ID means nothing here: the study layer turns it into
    #: weights and passes them to ``run_pinn(init_state=…)``.
    init_from: str = ""
    #: time marching: a time-dependent problem trained in this many windows one after another,
    #: each starting from the one before's end (cpikan.marching); 1: the whole span at once
    time_windows: int = bounded(1, ge=1, le=100)

    def __post_init__(self) -> None:
        validate(self)
        self.problem = refs.absolute_ref(self.problem)  # a replay from any folder finds the same file
        if isinstance(self.problem_kwargs.get("reference"), str):  # so does the reference solution
            self.problem_kwargs["reference"] = os.path.abspath(os.path.expanduser(self.problem_kwargs["reference"]))

    def to_json(self) -> str:
        return canonical_json(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PINNConfig:
        d = dict(d)
        model = ModelConfig(**d.pop("model", {}))
        train = TrainConfig(**d.pop("train", {}))
        return cls(model=model, train=train, **d)


def build_model(cfg: ModelConfig, problem: Problem, seed: int) -> ScaledModel:
    widths = [problem.dim, *cfg.hidden, problem.outputs]
    common = dict(init=cfg.init, dtype=cfg.dtype, fourier_features=cfg.fourier_features,
                  fourier_sigma=cfg.fourier_sigma, seed=seed)
    model: ScaledModel
    if cfg.kind == "mlp":
        model = MLP(widths, problem.lo, problem.hi, **common)
    else:
        model = ScaledCPIKAN(widths, cfg.degree, problem.lo, problem.hi, squash=cfg.squash,
                             layernorm=cfg.layernorm, basis=cfg.basis, **common)
    if cfg.hard_bc:
        if not problem.zero_faces:
            allowed = ", ".join(n for n, cls in PROBLEMS.items() if cls.zero_faces)
            raise ValueError(f"model.hard_bc: {problem.name!r} has no u = 0 faces to impose; "
                             f"allowed for: {allowed}")
        model.zero_faces = problem.zero_faces
    return model


def build(cfg: PINNConfig) -> tuple[Problem, ScaledModel]:
    seed_everything(cfg.train.seed)
    problem = make_problem(cfg.problem, **cfg.problem_kwargs)
    return problem, build_model(cfg.model, problem, cfg.train.seed)


def start_from(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a trained network's weights into ``model`` (transfer learning); the domain map
    (``lo``/``hi``) stays the new problem's. Refuses another architecture, naming the tensor."""
    own = model.state_dict()
    weights = {k: v for k, v in state.items() if k not in ("lo", "hi")}
    for k, v in weights.items():
        if k not in own or own[k].shape != v.shape:
            shape = tuple(own[k].shape) if k in own else "absent"
            raise ValueError(f"init_from: {source}'s network does not fit this model ({k}: "
                             f"{tuple(v.shape)} there, {shape} here); use the same model settings")
    missing = sorted(set(own) - set(weights) - {"lo", "hi"})
    if missing:
        raise ValueError(f"init_from: {source}'s network lacks {missing[0]}; use the same model settings")
    with torch.no_grad():
        for k, v in weights.items():
            own[k].copy_(v)


def run_pinn(
    cfg: PINNConfig, callbacks: Sequence[Callback] = (), init_state: dict[str, torch.Tensor] | None = None,
    **trainer_kw: Any
) -> tuple[TrainResult, ScaledModel, Problem]:
    """Build, train and evaluate; the result's metrics hold the relative L2 error.

    Args:
        cfg: the whole experiment (problem, model, trainer); seeds everything from ``cfg.train.seed``.
        callbacks: trainer hooks (e.g. ``tracker.metrics_callback()``).
        init_state: trained weights to start from (``cfg.init_from``'s network).
        trainer_kw: passed to :class:`~cpikan.train.Trainer` (``device``, ``checkpoint_path``).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    problem, model = build(cfg)
    check_problem(problem, model)  # the lab's own PDE: its mistakes named now, not after training
    if cfg.time_windows > 1:
        if not problem.time_dependent:
            raise ValueError(f"time_windows: {problem.name or cfg.problem} is not time-dependent; allowed: 1")
        if init_state is not None or cfg.init_from or trainer_kw:
            raise ValueError("time_windows: marching trains a network per window; it takes no init_from, "
                             "checkpoint or device")
        from cpikan.marching import march

        return march(cfg, callbacks, problem)  # the problem built and checked above
    if init_state is not None:
        start_from(model, init_state, cfg.init_from or "init_state")
    elif cfg.init_from:
        raise ValueError(f"init_from: run {cfg.init_from}'s weights were not given; run the config through "
                         "the study layer (python -m studies.run, tracking.replay), which loads them")
    trainer = Trainer(model, problem, cfg.train, callbacks, **trainer_kw)
    return trainer.fit(), model, problem


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
