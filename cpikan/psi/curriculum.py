"""Multi-resolution curriculum for the PSI network: coarse wafers first, then full resolution.

A level is a downsampling factor f: the same analytic wafer sampled with f× coarser pixels
(what a camera with bigger pixels records: the same surface, f× more fringe per pixel), and
patches f× smaller, so a step costs about 1/f² of a full-resolution one. The network is
fully convolutional, so its weights carry from level to level unchanged; each level is one
:class:`~cpikan.train.Trainer` run (its own Adam state and LR schedule), and every level is
validated on the same full-resolution set, so the curve is comparable with single-resolution
training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from cpikan.config import ConfigError, canonical_json
from cpikan.psi.train import PSITask
from cpikan.train import Callback, TrainConfig, Trainer, TrainResult


@dataclass
class CurriculumConfig:
    """Downsampling factor and Adam steps of each level, coarse to fine; the last factor is 1."""

    factors: tuple[int, ...] = (4, 2, 1)
    steps: tuple[int, ...] = (400, 200, 300)

    def __post_init__(self) -> None:
        self.factors = tuple(int(f) for f in self.factors)
        self.steps = tuple(int(s) for s in self.steps)
        if not self.factors or self.factors[-1] != 1:
            raise ConfigError("factors", f"coarse to fine, ending at 1 (full resolution), got {self.factors}")
        if any(a <= b for a, b in zip(self.factors, self.factors[1:])) or min(self.factors) < 1:
            raise ConfigError("factors", f"strictly decreasing positive integers, got {self.factors}")
        if len(self.steps) != len(self.factors) or min(self.steps) < 0 or self.steps[-1] < 1:
            raise ConfigError("steps", f"one count ≥ 0 per factor ({len(self.factors)}), ≥ 1 at full "
                                       f"resolution, got {self.steps}")

    def to_json(self) -> str:
        return canonical_json(self)

    @property
    def total_steps(self) -> int:
        return sum(self.steps)


def level_patch(patch: int, factor: int, multiple: int) -> int:
    """The patch side at a level: ``patch / factor``, kept a multiple of the network's
    downsampling factor (and at least one such multiple)."""
    return max(multiple, (patch // factor) // multiple * multiple)


class _Offset(Callback):
    """Steps numbered across levels (a level's step 1 follows the level before it), and the
    end of training reported once, after the last level."""

    def __init__(self, inner: Callback, offset: int, last: bool) -> None:
        self.inner, self.offset, self.last = inner, offset, last

    def on_train_begin(self, trainer: Any) -> None:
        self.inner.on_train_begin(trainer)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_step(step + self.offset, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_eval(step + self.offset, metrics)

    def on_train_end(self, result: Any) -> None:
        if self.last:
            self.inner.on_train_end(result)


def train_levels(model: nn.Module, tasks: Sequence[PSITask], config: CurriculumConfig,
                 train: TrainConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``model`` through one task per level (coarse to fine, matching ``config.factors``);
    the last level's result. Callbacks see one run: steps numbered across levels."""
    if len(tasks) != len(config.factors):
        raise ValueError(f"tasks: one per level ({len(config.factors)}), got {len(tasks)}")
    done, result = 0, None
    for i, (task, steps) in enumerate(zip(tasks, config.steps)):
        last = i == len(tasks) - 1
        if steps:
            wrapped = [_Offset(cb, done, last) for cb in callbacks]
            result = Trainer(model, task, replace(train, adam_steps=steps), wrapped).fit()
            done += steps
    assert result is not None  # the last level has ≥ 1 step (CurriculumConfig)
    return result


__all__ = ["CurriculumConfig", "level_patch", "train_levels"]
