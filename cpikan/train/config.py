"""TrainConfig: every knob of the trainer, validated, with a canonical JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field

from cpikan.config import ConfigError, bounded, canonical_json, choice, validate
from cpikan.losses import BALANCERS
from cpikan.train.lm import SOLVERS as LM_SOLVERS

SCHEDULERS = ("none", "exponential", "cosine", "plateau", "multistep")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Adam (optionally scheduled), then L-BFGS, then Levenberg–Marquardt, each phase
    skipped when its step count is 0, with the robustness options of the trainer.

    Step counts are optimiser steps; one L-BFGS step is one L-BFGS iteration (its line
    search may evaluate the loss several times); one LM step is one Jacobian and the
    damped solves it takes to lower the loss. L-BFGS and LM run full batch in full
    precision with the loss weights frozen at their last values.
    """

    adam_steps: int = bounded(1000, ge=0)
    lr: float = bounded(1e-3, gt=0)
    scheduler: str = choice("none", SCHEDULERS)
    #: exponential/cosine: the learning rate falls to lr·lr_final_factor by the end of Adam
    lr_final_factor: float = bounded(0.01, gt=0, le=1)
    #: multistep: milestones as fractions of the Adam steps, each multiplying lr by gamma
    milestones: tuple[float, ...] = (0.5, 0.75)
    multistep_gamma: float = bounded(0.1, gt=0, le=1)
    plateau_factor: float = bounded(0.5, gt=0, le=1)
    plateau_patience: int = bounded(200, ge=0)
    lbfgs_steps: int = bounded(0, ge=0)
    lbfgs_lr: float = bounded(1.0, gt=0)
    lbfgs_history: int = bounded(50, ge=1)
    lbfgs_chunk: int = bounded(20, ge=1)
    #: Levenberg–Marquardt iterations after L-BFGS (small models: J is N × P, see cpikan.train.lm)
    lm_steps: int = bounded(0, ge=0)
    lm_damping: float = bounded(1e-3, gt=0)
    lm_solver: str = choice("cholesky", LM_SOLVERS)  # svd: no JᵀJ (ill-conditioned J, float64 precision)
    clip_grad_norm: float | None = bounded(None, gt=0, optional=True)
    early_stop_patience: int = bounded(0, ge=0)
    early_stop_min_delta: float = bounded(0.0, ge=0)
    accumulation_steps: int = bounded(1, ge=1)
    amp: str = choice("none", AMP_MODES)
    checkpoint_activations: bool = False
    nan_guard: bool = True
    nan_lr_factor: float = bounded(0.5, gt=0, le=1)
    nan_snapshot_every: int = bounded(1, ge=1)
    balancing: str = choice("fixed", BALANCERS)
    loss_weights: dict[str, float] = field(default_factory=dict)
    balance_every: int = bounded(10, ge=1)
    resample_every: int = bounded(0, ge=0)
    rar_every: int = bounded(0, ge=0)
    rar_points: int = bounded(100, ge=1)
    rar_candidates: int = bounded(10000, ge=1)
    rar_k: float = bounded(1.0, ge=0)
    rar_c: float = bounded(1.0, ge=0)
    #: VW-PINNs: weigh each interior residual by its point's volume share (kNN radius^d),
    #: recomputed whenever the points change (RAR-D crowds them where the residual is large)
    volume_weights: bool = False
    #: augmented Lagrangian for the condition terms (bc, ic, data): every ``al_every`` steps
    #: (any phase) each target moves against its current violation, t ← t − (u − v). That is
    #: the method of multipliers in least-squares form: mean((u − t)²) = mean(r²) + mean(λr)
    #: + const with λ = 2(v − t), so LM keeps working on it. 0: the plain penalty.
    al_every: int = bounded(0, ge=0)
    eval_every: int = bounded(0, ge=0)
    checkpoint_every: int = bounded(0, ge=0)
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        validate(self)
        self.milestones = tuple(float(m) for m in self.milestones)
        if any(not 0 < m < 1 for m in self.milestones):
            raise ConfigError("milestones", f"fractions in (0, 1), got {self.milestones}")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): its sha256 identifies the config."""
        return canonical_json(self)
