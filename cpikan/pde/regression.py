"""Function fitting as a "PDE" of order zero: the residual is u − f (Wang & Lai's test-bed).

It has no derivatives and no boundary terms, so it isolates the approximation question
multi-stage training answers (how close to float64 a sum of networks gets) from the PDE's
conditioning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cpikan.diff import Derivatives
from cpikan.pde.base import Collocation, DerivFn, Problem, Term, misfit


class Regression1D(Problem):
    """u = f(x) on [-1, 1] with f(x) = sin(2x + 1) + 0.2·exp(1.3x) (Wang & Lai 2024, eq. 14)."""

    name = "regression1d"
    coords = ("x",)

    def __init__(self, **kw: object) -> None:
        kw.setdefault("n_boundary", 0)
        kw.setdefault("eval_resolution", 2001)
        super().__init__((-1.0,), (1.0,), **kw)

    def exact(self, x: Tensor) -> Tensor:
        return torch.sin(2 * x[:, 0] + 1) + 0.2 * torch.exp(1.3 * x[:, 0])

    def residual(self, d: Derivatives, x: Tensor) -> Tensor:
        return d.u[:, 0] - self.exact(x)

    def terms(self, batch: Collocation, deriv_fn: DerivFn | None = None) -> dict[str, Term]:
        """Values only (no jet): the misfit to f, evaluated once per batch."""
        return {"pde": Term(misfit, (batch.interior, self.exact(batch.interior)))}
