"""Diffusion and reaction–diffusion in (x, t), forward and inverse (docs/domain.md §2)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from cpikan.diff import Derivatives
from cpikan.pde.base import Problem


class ReactionDiffusion(Problem):
    """u_t = D·u_xx − κu on [-L, L] × [0, 1], u(±L, t) = 0.

    The initial condition is a sum of sine modes Σ a_m sin(mπx), so the exact solution is
    Σ a_m exp(−(D(mπ)² + κ)t) sin(mπx). One mode (the docs/domain.md definition) by default.
    """

    name = "reaction_diffusion"
    coords = ("x", "t")
    time_dependent = True

    def __init__(
        self,
        D: float = 0.1,
        kappa: float = 0.5,
        L: float = 6.0,
        modes: tuple[tuple[float, float], ...] = ((1, 1.0),),
        **kw: object,
    ) -> None:
        kw.setdefault("eval_resolution", 201)
        super().__init__((-L, 0.0), (L, 1.0), **kw)
        self.D_true, self.kappa_true, self.modes = D, kappa, tuple(modes)

    def coefficients(self) -> tuple[Tensor | float, Tensor | float]:
        return self.D_true, self.kappa_true

    def exact(self, x: Tensor) -> Tensor:
        out = torch.zeros_like(x[:, 0])
        for m, a in self.modes:
            rate = self.D_true * (m * math.pi) ** 2 + self.kappa_true
            out = out + a * torch.exp(-rate * x[:, 1]) * torch.sin(m * math.pi * x[:, 0])
        return out

    def residual(self, d: Derivatives, x: Tensor) -> Tensor:
        D, kappa = self.coefficients()
        return d.dx(1) - D * d.dxx(0) + kappa * d.u[:, 0]


class Diffusion(ReactionDiffusion):
    """u_t = D·u_xx, D = 0.1, on [-6, 6] × [0, 1]; u = exp(−Dπ²t)·sin(πx)."""

    name = "diffusion"

    def __init__(self, D: float = 0.1, **kw: object) -> None:
        super().__init__(D=D, kappa=0.0, **kw)


class ReactionDiffusionInverse(ReactionDiffusion):
    """Learn positive D and κ (as exp of a parameter) from sparse noisy samples of u.

    With the one-mode initial condition only Dπ² + κ is identifiable (u_xx = −π²u), so this
    problem starts from two modes, sin(πx) + ½ sin(πx/2) (both vanish at x = ±6), whose decay
    rates Dπ² + κ and Dπ²/4 + κ pin D and κ apart. The observations are drawn once from ``data_seed`` (a fixed dataset).
    """

    name = "reaction_diffusion_inverse"

    def __init__(
        self,
        n_data: int = 200,
        noise: float = 0.01,
        data_seed: int = 1234,
        data_file: str | None = None,
        D_init: float = 0.05,
        kappa_init: float = 0.25,
        **kw: object,
    ) -> None:
        kw.setdefault("modes", ((1, 1.0), (0.5, 0.5)))
        super().__init__(**kw)
        self.log_D = nn.Parameter(torch.tensor(math.log(D_init), dtype=torch.float64))
        self.log_kappa = nn.Parameter(torch.tensor(math.log(kappa_init), dtype=torch.float64))
        if data_file is not None:  # measured (or previously written) observations
            with np.load(data_file) as f:
                pts = torch.from_numpy(f["points"]).double()
                noisy = torch.from_numpy(f["values"]).double()
            if pts.ndim != 2 or pts.shape[1] != 2 or noisy.shape != pts.shape[:1]:
                raise ValueError(f"data_file: expected points (N, 2) and values (N,), got "
                                 f"{tuple(pts.shape)} and {tuple(noisy.shape)}")
        else:
            pts, noisy = self.observe(n_data, noise, data_seed)
        self.register_buffer("data_points", pts)
        self.register_buffer("data_values", noisy)
        self.n_data, self.noise, self.data_seed = len(pts), noise, data_seed

    def observe(self, n: int, noise: float, seed: int) -> tuple[Tensor, Tensor]:
        """n samples of the exact solution with Gaussian noise of ``noise``·std(u)."""
        gen = torch.Generator().manual_seed(seed)
        pts = self.sample_interior(n, gen)
        clean = self.exact(pts)
        return pts, clean + noise * clean.std() * torch.randn(n, generator=gen, dtype=clean.dtype)

    def write_observations(self, path: str, n: int = 200, noise: float = 0.01, seed: int = 1234) -> None:
        pts, vals = self.observe(n, noise, seed)
        np.savez(path, points=pts.numpy(), values=vals.numpy())

    def coefficients(self) -> tuple[Tensor, Tensor]:
        return self.log_D.exp(), self.log_kappa.exp()

    def data(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {"data": (self.data_points, self.data_values)}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        out = super().evaluate(model)
        D, kappa = (float(c.detach()) for c in self.coefficients())
        out.update(D=D, kappa=kappa, D_rel_err=abs(D - self.D_true) / self.D_true,
                   kappa_rel_err=abs(kappa - self.kappa_true) / self.kappa_true)
        return out

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "n_data": self.n_data, "noise": self.noise,
                "data_seed": self.data_seed}
