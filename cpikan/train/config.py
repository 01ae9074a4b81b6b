"""TrainConfig: every knob of the trainer, validated, with a canonical JSON form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from cpikan.losses import BALANCERS

SCHEDULERS = ("none", "exponential", "cosine", "plateau", "multistep")
AMP_MODES = ("none", "bf16", "fp16")


def _choice(field_name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name}: unknown {value!r}; allowed: {', '.join(allowed)}")


@dataclass
class TrainConfig:
    """Adam (optionally scheduled), then L-BFGS, then Levenberg–Marquardt, each phase
    skipped when its step count is 0, with the robustness options of the trainer.

    Step counts are optimiser steps; one L-BFGS step is one L-BFGS iteration (its line
    search may evaluate the loss several times); one LM step is one Jacobian and the
    damped solves it takes to lower the loss. L-BFGS and LM run full batch in full
    precision with the loss weights frozen at their last values.
    """

    adam_steps: int = 1000
    lr: float = 1e-3
    scheduler: str = "none"
    #: exponential/cosine: the learning rate falls to lr·lr_final_factor by the end of Adam
    lr_final_factor: float = 0.01
    #: multistep: milestones as fractions of the Adam steps, each multiplying lr by gamma
    milestones: tuple[float, ...] = (0.5, 0.75)
    multistep_gamma: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 200
    lbfgs_steps: int = 0
    lbfgs_lr: float = 1.0
    lbfgs_history: int = 50
    lbfgs_chunk: int = 20
    #: Levenberg–Marquardt iterations after L-BFGS (small models: J is N × P, see cpikan.train.lm)
    lm_steps: int = 0
    lm_damping: float = 1e-3
    clip_grad_norm: float | None = None
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    accumulation_steps: int = 1
    amp: str = "none"
    checkpoint_activations: bool = False
    nan_guard: bool = True
    nan_lr_factor: float = 0.5
    nan_snapshot_every: int = 1
    balancing: str = "fixed"
    loss_weights: dict[str, float] = field(default_factory=dict)
    balance_every: int = 10
    resample_every: int = 0
    rar_every: int = 0
    rar_points: int = 100
    rar_candidates: int = 10000
    rar_k: float = 1.0
    rar_c: float = 1.0
    eval_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("amp", self.amp, AMP_MODES)
        _choice("balancing", self.balancing, BALANCERS)
        for name in ("adam_steps", "lbfgs_steps", "lm_steps", "early_stop_patience", "resample_every",
                     "rar_every", "eval_every", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: must be ≥ 0, got {getattr(self, name)}")
        for name in ("accumulation_steps", "lbfgs_chunk", "lbfgs_history", "balance_every",
                     "nan_snapshot_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.lbfgs_lr > 0:
            raise ValueError(f"lr: must be > 0, got lr={self.lr}, lbfgs_lr={self.lbfgs_lr}")
        if not self.lm_damping > 0:
            raise ValueError(f"lm_damping: must be > 0, got {self.lm_damping}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm: must be > 0 or None, got {self.clip_grad_norm}")
        if not 0 < self.lr_final_factor <= 1:
            raise ValueError(f"lr_final_factor: must be in (0, 1], got {self.lr_final_factor}")
        self.milestones = tuple(float(m) for m in self.milestones)
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones: fractions in (0, 1), got {self.milestones}")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): its sha256 identifies the config."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
