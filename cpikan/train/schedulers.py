"""Learning-rate schedulers by name, built from torch.optim.lr_scheduler."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LRScheduler,
    MultiStepLR,
    ReduceLROnPlateau,
)

from cpikan.train.config import SCHEDULERS, TrainConfig


def make_scheduler(opt: Optimizer, cfg: TrainConfig) -> LRScheduler | ReduceLROnPlateau | None:
    steps = max(cfg.adam_steps, 1)
    name = cfg.scheduler
    if name == "none":
        return None
    if name == "exponential":
        return ExponentialLR(opt, gamma=cfg.lr_final_factor ** (1.0 / steps))
    if name == "cosine":
        return CosineAnnealingLR(opt, T_max=steps, eta_min=cfg.lr * cfg.lr_final_factor)
    if name == "plateau":
        return ReduceLROnPlateau(opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    if name == "multistep":
        marks = sorted({max(1, int(m * steps)) for m in cfg.milestones})
        return MultiStepLR(opt, milestones=marks, gamma=cfg.multistep_gamma)
    raise ValueError(f"scheduler: unknown {name!r}; allowed: {', '.join(SCHEDULERS)}")


def step_scheduler(sched: object, loss: float) -> None:
    if sched is None:
        return
    if isinstance(sched, ReduceLROnPlateau):
        sched.step(loss)
    else:
        sched.step()  # type: ignore[attr-defined]


def scale_lr(opt: Optimizer, factor: float) -> None:
    """Lower every group's learning rate (NaN guard); schedulers keep scaling from there.
    Levenberg–Marquardt has no learning rate: its damping rises by 1/factor instead."""
    for group in opt.param_groups:
        if "damping" in group:
            group["damping"] = group["damping"] / factor
            continue
        group["lr"] = group["lr"] * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor


__all__ = ["make_scheduler", "scale_lr", "step_scheduler"]
