"""Callbacks: how the layers above observe training without cpikan importing them.

The trainer calls every hook on every callback; implement only the ones you need.
Metrics arrive as plain ``dict[str, float]``.
"""

from __future__ import annotations

from typing import Any


class Callback:
    def on_train_begin(self, trainer: Any) -> None:
        """Before the first step (after a resume: before the first new step)."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """After every optimiser step: loss, per-term losses, weights, lr, grad_norm."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """After an evaluation on the problem's fixed grid (rel_l2 and friends)."""

    def on_checkpoint(self, step: int, path: str) -> None:
        """After a checkpoint file was written (atomically)."""

    def on_train_end(self, result: Any) -> None:
        """Once, with the TrainResult, also when training stopped early."""


class History(Callback):
    """Keeps every step's and evaluation's metrics in memory (tests, figures)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.evals: list[tuple[int, dict[str, float]]] = []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, dict(metrics)))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, dict(metrics)))
