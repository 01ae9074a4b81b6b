"""Helmholtz problems (docs/domain.md §2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cpikan.diff import Derivatives
from cpikan.pde.base import Collocation, DerivFn, Problem, Term


class Helmholtz1D(Problem):
    """u'' + k²u = 0 on [-1, 1], k = 4π, u(±1) = sin(±k); u = sin(kx).

    With k = 4π the Dirichlet data are zero and k² is an eigenvalue: every A·sin(kx) solves
    the equation and the boundary conditions, u = 0 included (a PINN finds that one). The
    consistent Neumann data u'(±1) = k·cos(k) fix the amplitude; they enter as the term
    ``bc_flux``.
    """

    name = "helmholtz1d"
    coords = ("x",)

    def __init__(self, k: float = 4 * math.pi, **kw: object) -> None:
        kw.setdefault("n_boundary", 2)
        kw.setdefault("eval_resolution", 2001)
        super().__init__((-1.0,), (1.0,), **kw)
        self.k = k
        self.residual_scale = k * k

    def exact(self, x: Tensor) -> Tensor:
        return torch.sin(self.k * x[:, 0])

    def residual(self, d: Derivatives, x: Tensor) -> Tensor:
        return d.dxx(0) + self.k**2 * d.u[:, 0]

    def terms(self, batch: Collocation, deriv_fn: DerivFn | None = None) -> dict[str, Term]:
        terms = super().terms(batch, deriv_fn)
        ends = torch.tensor([[-1.0], [1.0]], dtype=batch.interior.dtype, device=batch.interior.device)

        def flux(model: nn.Module, ends: Tensor, target: Tensor) -> Tensor:
            d = model.derivatives(ends) if deriv_fn is None else deriv_fn(model, ends)
            return (d.dx(0) - target.to(d.u.dtype)) / self.k

        terms["bc_flux"] = Term(flux, (ends, self.k * torch.cos(self.k * ends[:, 0])))
        return terms

    def sample_boundary(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.tensor([[-1.0], [1.0]], dtype=torch.float64).repeat((n + 1) // 2, 1)[:n]


class Helmholtz2D(Problem):
    """Δu + λu = q on [-1, 1]², u = 0 on the boundary; u = sin(a1πx)·sin(a2πy)."""

    name = "helmholtz2d"
    coords = ("x", "y")
    zero_faces = (0, 1)

    def __init__(self, a1: float = 1.0, a2: float = 4.0, lam: float = 1.0, **kw: object) -> None:
        kw.setdefault("eval_resolution", 201)
        super().__init__((-1.0, -1.0), (1.0, 1.0), **kw)
        self.a1, self.a2, self.lam = a1, a2, lam
        self.residual_scale = math.pi**2 * (a1**2 + a2**2)

    def exact(self, x: Tensor) -> Tensor:
        return torch.sin(self.a1 * math.pi * x[:, 0]) * torch.sin(self.a2 * math.pi * x[:, 1])

    def residual(self, d: Derivatives, x: Tensor) -> Tensor:
        k2 = (self.a1 * math.pi) ** 2 + (self.a2 * math.pi) ** 2
        q = (self.lam - k2) * self.exact(x)
        return d.laplacian() + self.lam * d.u[:, 0] - q
