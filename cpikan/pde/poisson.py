"""3-D Poisson on the unit cube (docs/domain.md §2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cpikan.diff import Derivatives
from cpikan.pde.base import Problem


class Poisson3D(Problem):
    """Δu = −3π²·sin(πx)sin(πy)sin(πz) on [0, 1]³, u = 0 on the boundary."""

    name = "poisson3d"
    coords = ("x", "y", "z")
    zero_faces = (0, 1, 2)
    residual_scale = 3 * math.pi**2

    def __init__(self, **kw: object) -> None:
        kw.setdefault("eval_resolution", 41)
        kw.setdefault("n_boundary", 1200)
        super().__init__((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), **kw)

    def exact(self, x: Tensor) -> Tensor:
        return torch.sin(math.pi * x).prod(dim=1)

    def residual(self, d: Derivatives, x: Tensor) -> Tensor:
        return d.laplacian() + 3 * math.pi**2 * self.exact(x)
