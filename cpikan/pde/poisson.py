"""3-D Poisson on the unit cube (docs/domain.md §2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cpikan.diff import Derivatives
from cpikan.pde.base import Collocation, DerivFn, Problem, Term, misfit

LOSSES = ("residual", "ritz")


class Poisson3D(Problem):
    """Δu = −3π²·sin(πx)sin(πy)sin(πz) on [0, 1]³, u = 0 on the boundary.

    ``loss="ritz"`` trains on the Deep Ritz energy E(u) = ∫ ½|∇u|² − f·u (f = −Δu*, its
    minimiser over u = 0 on the boundary is the solution) instead of the squared residual:
    first derivatives only, but an energy is not a sum of squares, so Adam/L-BFGS only.
    """

    name = "poisson3d"
    coords = ("x", "y", "z")
    zero_faces = (0, 1, 2)
    residual_scale = 3 * math.pi**2
    method_kwargs = (*Problem.method_kwargs, "loss")  # the Ritz energy solves the same problem

    def __init__(self, loss: str = "residual", **kw: object) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss: unknown {loss!r}; allowed: {', '.join(LOSSES)}")
        kw.setdefault("eval_resolution", 41)
        kw.setdefault("n_boundary", 1200)
        super().__init__((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), **kw)
        self.loss = loss

    def exact(self, x: Tensor) -> Tensor:
        return torch.sin(math.pi * x).prod(dim=1)

    def residual(self, d: Derivatives, x: Tensor) -> Tensor:
        return d.laplacian() + 3 * math.pi**2 * self.exact(x)

    def terms(self, batch: Collocation, deriv_fn: DerivFn | None = None) -> dict[str, Term]:
        if self.loss == "ritz":
            raise ValueError("lm_steps: the Deep Ritz energy (loss='ritz') is not a sum of squares; "
                             "train it with Adam or L-BFGS (lm_steps=0)")
        return super().terms(batch, deriv_fn)

    def loss_terms(self, model: nn.Module, batch: Collocation, deriv_fn: DerivFn | None = None) -> dict[str, Tensor]:
        if self.loss != "ritz":
            return super().loss_terms(model, batch, deriv_fn)
        d = model.derivatives(batch.interior) if deriv_fn is None else deriv_fn(model, batch.interior)
        x = batch.interior.to(d.u.dtype)
        grad2 = sum(d.dx(j).square() for j in range(self.dim))
        energy = 0.5 * grad2 - 3 * math.pi**2 * self.exact(x) * d.u[:, 0]
        out = {"pde": energy.mean() / self.residual_scale}  # the unit cube: mean = integral
        for name, (pts, vals) in batch.conditions.items():
            out[name] = misfit(model, pts, vals).square().mean()
        return out

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "loss": self.loss}


class Poisson2DPeak(Problem):
    """Δu = f on [-1, 1]², u = g on the boundary; u = exp(−α·|x − c|²), a peak of width
    1/√(2α) at c (α = 100: 0.07, a few percent of the domain).

    The local feature is the point: on a smooth solution the residual has no region for
    adaptive sampling (RAR-D) to crowd points into, here it has one (``bench/collocation.py``).
    """

    name = "poisson2d_peak"
    coords = ("x", "y")

    def __init__(self, alpha: float = 100.0, center: tuple[float, float] = (0.2, -0.1), **kw: object) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha: must be > 0, got {alpha}")
        kw.setdefault("eval_resolution", 201)
        super().__init__((-1.0, -1.0), (1.0, 1.0), **kw)
        self.alpha, self.center = float(alpha), (float(center[0]), float(center[1]))
        self.residual_scale = 4 * self.alpha  # |Δu| at the peak

    def _r2(self, x: Tensor) -> Tensor:
        return (x[:, 0] - self.center[0]) ** 2 + (x[:, 1] - self.center[1]) ** 2

    def exact(self, x: Tensor) -> Tensor:
        return torch.exp(-self.alpha * self._r2(x))

    def residual(self, d: Derivatives, x: Tensor) -> Tensor:
        r2 = self._r2(x)
        f = (4 * self.alpha**2 * r2 - 4 * self.alpha) * torch.exp(-self.alpha * r2)
        return d.laplacian() - f

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "alpha": self.alpha, "center": list(self.center)}
