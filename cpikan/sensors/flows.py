"""Exact incompressible Navier–Stokes solutions: the sensor benchmarks' ground truth.

- **Kovasznay flow** (steady, 2-D; Kovasznay 1948) on [−0.5, 1] × [−0.5, 1.5]:
  u = 1 − e^{λx} cos 2πy, v = λ/(2π) e^{λx} sin 2πy, p = ½(1 − e^{2λx}),
  λ = Re/2 − √(Re²/4 + 4π²).
- **Taylor–Green vortex** (unsteady, 2-D, periodic on [0, 2π]²), viscosity ν = 1/Re:
  u = −cos x sin y F(t), v = sin x cos y F(t), p = −¼(cos 2x + cos 2y) F(t)², F = e^{−2νt}.

Both satisfy u·∇u + ∇p = ν∇²u (+ ∂u/∂t) and ∇·u = 0 exactly. Functions take numpy or
torch arrays alike (the PINN residuals need torch, the snapshots numpy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

FIELDS = ("u", "v", "p")
FLOWS = ("kovasznay", "taylor_green")


def _lib(x: Any) -> Any:
    if isinstance(x, np.ndarray | float | int):
        return np
    import torch

    return torch


def kovasznay_lambda(re: float) -> float:
    return re / 2 - math.sqrt(re * re / 4 + 4 * math.pi**2)


def kovasznay(x: Any, y: Any, re: float = 40.0) -> tuple[Any, Any, Any]:
    xp = _lib(x)
    lam = kovasznay_lambda(re)
    e = xp.exp(lam * x)
    return 1 - e * xp.cos(2 * math.pi * y), lam / (2 * math.pi) * e * xp.sin(2 * math.pi * y), 0.5 * (1 - xp.exp(2 * lam * x))


def taylor_green(x: Any, y: Any, t: Any, re: float = 100.0) -> tuple[Any, Any, Any]:
    xp = _lib(x)
    f = xp.exp(-2 * t / re)
    return (-xp.cos(x) * xp.sin(y) * f, xp.sin(x) * xp.cos(y) * f,
            -0.25 * (xp.cos(2 * x) + xp.cos(2 * y)) * f * f)


@dataclass(frozen=True)
class Grid:
    """A uniform n × n grid over a rectangle (cell-centred: no point on a periodic seam twice)."""

    n: int
    x0: float
    x1: float
    y0: float
    y1: float

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        xs = self.x0 + (np.arange(self.n) + 0.5) * (self.x1 - self.x0) / self.n
        ys = self.y0 + (np.arange(self.n) + 0.5) * (self.y1 - self.y0) / self.n
        return np.meshgrid(xs, ys, indexing="ij")

    def points(self) -> np.ndarray:
        """(n², 2) coordinates in the flattened field order."""
        x, y = self.mesh()
        return np.stack([x.ravel(), y.ravel()], 1)


KOVASZNAY_GRID = (-0.5, 1.0, -0.5, 1.5)
TAYLOR_GREEN_GRID = (0.0, 2 * math.pi, 0.0, 2 * math.pi)


def domain(flow: str) -> tuple[float, float, float, float]:
    return KOVASZNAY_GRID if flow == "kovasznay" else TAYLOR_GREEN_GRID


def snapshots(flow: str, n: int, count: int, field: str = "u", seed: int = 0,
              dtype: Any = np.float32, bounds: tuple[float, float, float, float] | None = None,
              ) -> tuple[np.ndarray, Grid, np.ndarray]:
    """(count, n²) snapshots of one velocity/pressure field on an n × n grid over ``bounds``
    (default: the flow's domain), the grid, and each snapshot's parameter: Kovasznay over
    Re ∈ [20, 80]; Taylor–Green over time t ∈ [0, 2] and a random phase shift of the vortex
    lattice (Re = 100)."""
    if flow not in ("kovasznay", "taylor_green"):
        raise ValueError(f"flow: unknown {flow!r}; allowed: kovasznay, taylor_green")
    if field not in FIELDS:
        raise ValueError(f"field: unknown {field!r}; allowed: {', '.join(FIELDS)}")
    if n < 2 or count < 1:
        raise ValueError(f"n, count: need n ≥ 2 and count ≥ 1, got n={n}, count={count}")
    rng = np.random.default_rng(seed)
    grid = Grid(n, *(bounds or domain(flow)))
    x, y = grid.mesh()
    out = np.empty((count, n * n), dtype)
    k = FIELDS.index(field)
    if flow == "kovasznay":
        params = np.linspace(20.0, 80.0, count)
        for i, re in enumerate(params):
            out[i] = kovasznay(x, y, float(re))[k].ravel()
    else:
        params = np.stack([np.linspace(0.0, 2.0, count), rng.uniform(0, 0.5, count)], 1)
        for i, (t, phase) in enumerate(params):
            out[i] = taylor_green(x + phase, y + phase, float(t))[k].ravel()
    return out, grid, params
