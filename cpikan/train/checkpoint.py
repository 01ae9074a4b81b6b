"""Checkpoints of the trainer (bit-for-bit resume) and the in-place state copy the NaN
guard snapshots with. A mixin of :class:`cpikan.train.trainer.Trainer`: it reads and
restores the trainer's own attributes."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cpikan.pde.base import Collocation


class Checkpointing:
    """Everything that makes a resumed run continue exactly where it stopped."""

    # the Trainer's state, read and restored here
    cfg: Any
    device: torch.device
    callbacks: list[Any]
    step: int
    phase: str
    end: dict[str, int]
    model: Any
    problem: Any
    opt: Any
    sched: Any
    scaler: Any
    balancer: Any
    gen: torch.Generator
    batch: Any
    nan_events: int
    best: float
    wait: int
    losses: list[float]

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_json(),
            "step": self.step,
            "phase": self.phase,
            "lbfgs_end": self.end["lbfgs"],
            "lm_end": self.end["lm"],
            "model": self.model.state_dict(),
            "problem": self.problem.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "scaler": self.scaler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "batch": self.batch.state(),
            "nan_events": self.nan_events,
            "early_stop": (self.best, self.wait),
            "losses": list(self.losses),
        }

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename): a crash never leaves half a checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        for cb in self.callbacks:
            cb.on_checkpoint(self.step, str(path))
        return path

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)  # tensors and plain values only
        if state["config"] != self.cfg.to_json():
            raise ValueError(f"resume: checkpoint {path} was written with a different TrainConfig")
        self.model.load_state_dict(state["model"])
        self.problem.load_state_dict(state["problem"])
        self.phase, self.step = state["phase"], state["step"]
        self.end["lbfgs"] = state["lbfgs_end"]
        self.end["lm"] = state.get("lm_end", state["lbfgs_end"])  # checkpoints from before the LM phase
        if self.phase in ("lbfgs", "lm"):
            self.opt = self._make_optimizer(self.phase)
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None and state["scheduler"] is not None:
            self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.balancer.load_state_dict(state["balancer"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.batch = Collocation.from_state(state["batch"])
        self.nan_events = state["nan_events"]
        self.best, self.wait = state["early_stop"]
        self.losses = list(state["losses"])


def copy_into(dst: Any, src: Any) -> Any:
    """A deep copy of ``src`` (nested dicts/lists of tensors and plain values) that reuses
    ``dst``'s tensors where shape, dtype and device match."""
    if isinstance(src, Tensor):
        if isinstance(dst, Tensor) and dst.shape == src.shape and dst.dtype == src.dtype \
                and dst.device == src.device and dst is not src:
            return dst.copy_(src)
        return src.detach().clone()
    if isinstance(src, dict):
        old = dst if isinstance(dst, dict) else {}
        return {k: copy_into(old.get(k), v) for k, v in src.items()}
    if isinstance(src, (list, tuple)):
        old = dst if isinstance(dst, (list, tuple)) and len(dst) == len(src) else [None] * len(src)
        return type(src)(copy_into(d, v) for d, v in zip(old, src))
    return copy.deepcopy(src)
