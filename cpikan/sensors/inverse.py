"""A whole flow field, and its Reynolds number, from K point sensors and the Navier–Stokes equations.

A Scaled-cPIKAN maps (x, y) to a stream function ψ and the pressure p, and the velocity is
u = ∂ψ/∂y, v = −∂ψ/∂x (:class:`DivergenceFree`): ∇·u = 0 holds by construction, to
rounding, instead of being one more loss term that ends near 1e-4 (measured with (u, v, p)
outputs and a divergence term: 6e-4 RMS after 400 LM steps, 60× over seed 003's 1e-5 red
line). It is fitted, in float64, to
- the K sensors' readings of (u, v, p), with noise (a fraction of each field's range);
- the steady Navier–Stokes momentum residual u·∇u + ∇p − ∇²u/Re on interior points (third
  derivatives of ψ by one ``torch.func.jacfwd`` level over the jet), with Re an unknown
  (trained as log Re);
- Dirichlet data on the boundary sides that are *kept* (by default the outlet x = x₁ is
  withheld, so the sensors carry what the physics alone cannot);
with Levenberg–Marquardt (:mod:`cpikan.train.lm`; optionally Adam first): every term is
pointwise, so the Jacobian is one ``vmap`` pass. Sensors are placed on the POD basis of a
family of flows over Re (:mod:`cpikan.sensors.placement`). The same readings also give the
linear POD estimate, so what the physics adds is measured, not assumed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jacfwd, vmap

from cpikan.config import bounded, choice, validate
from cpikan.pde.base import Term
from cpikan.sensors import flows
from cpikan.sensors.guard import SIDES, FlowCase, GuardResult, check_flow
from cpikan.sensors.placement import METHODS, Placement, place, reconstruct
from cpikan.sensors.pod import pod_basis


@dataclass
class FlowInverseConfig:
    re: float = bounded(40.0, gt=0)  # the true Reynolds number (generates the readings)
    re_init: float = bounded(20.0, gt=0)  # the starting guess
    k: int = bounded(12, ge=1)
    placement: str = choice("qr", METHODS)
    noise: float = bounded(0.01, ge=0)  # sensor noise, a fraction of each field's range
    kept_sides: str = "bottom,top,left"  # boundary sides with Dirichlet data (right = outlet withheld)
    grid: int = bounded(64, ge=8)  # the placement grid (n × n) and the POD family's
    snapshots: int = bounded(40, ge=2)
    modes: int = bounded(8, ge=1)
    width: int = bounded(10, ge=1)
    depth: int = bounded(2, ge=1, le=6)
    degree: int = bounded(5, ge=1, le=16)
    n_interior: int = bounded(32, ge=4)  # interior points per side (a jittered n × n grid)
    n_boundary: int = bounded(32, ge=2)  # points per kept side
    adam_steps: int = bounded(0, ge=0)
    lr: float = bounded(5e-3, gt=0)
    lm_steps: int = bounded(300, ge=0)
    physics_weight: float = bounded(1000.0, gt=0)  # on the PDE and boundary terms; sensors weigh 1
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        validate(self)
        bad = [s for s in self.kept_sides.split(",") if s not in SIDES]
        if bad:
            from cpikan.config import ConfigError

            raise ConfigError("kept_sides", f"unknown side {bad[0]!r}; allowed: one or more of "
                              f"{', '.join(SIDES)}, comma-separated (the physics needs some boundary data)")


class DivergenceFree(nn.Module):
    """(u, v, p) = (∂ψ/∂y, −∂ψ/∂x, p) from a network of (ψ, p): divergence-free by construction."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        d = self.net.derivatives(x)
        return torch.stack([d.dx(1, 0), -d.dx(0, 0), d.u[:, 1]], 1)


class KovasznayInverse(nn.Module):
    """The loss terms; log Re is this module's parameter, so LM trains it with the model."""

    def __init__(self, cfg: FlowInverseConfig, sensors: Tensor, readings: Tensor, gen: torch.Generator) -> None:
        super().__init__()
        self.log_re = nn.Parameter(torch.tensor(math.log(cfg.re_init), dtype=torch.float64))
        x0, x1, y0, y1 = flows.KOVASZNAY_GRID
        n = cfg.n_interior
        cell = torch.tensor([(x1 - x0) / n, (y1 - y0) / n], dtype=torch.float64)
        ij = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).reshape(-1, 2)
        jitter = torch.rand(n * n, 2, generator=gen, dtype=torch.float64)
        self.interior = torch.tensor([x0, y0], dtype=torch.float64) + (ij + jitter) * cell
        s = torch.linspace(0, 1, cfg.n_boundary, dtype=torch.float64)
        side_pts = {"bottom": torch.stack([x0 + (x1 - x0) * s, torch.full_like(s, y0)], 1),
                    "right": torch.stack([torch.full_like(s, x1), y0 + (y1 - y0) * s], 1),
                    "top": torch.stack([x0 + (x1 - x0) * s, torch.full_like(s, y1)], 1),
                    "left": torch.stack([torch.full_like(s, x0), y0 + (y1 - y0) * s], 1)}
        self.boundary = torch.cat([side_pts[k] for k in cfg.kept_sides.split(",")])
        u, v, _ = flows.kovasznay(self.boundary[:, 0], self.boundary[:, 1], cfg.re)
        self.boundary_uv = torch.stack([u, v], 1)
        self.sensors, self.readings = sensors, readings

    def nu(self) -> Tensor:
        return torch.exp(-self.log_re)

    def _momentum(self, model: nn.Module, x: Tensor, k: int) -> Tensor:
        """Component k of u·∇u + ∇p − ν∇²u with (u, v) = (ψ_y, −ψ_x).

        The jet gives ψ, p, their gradients and pure second derivatives in one pass; one
        forward-mode level over it (``jacfwd``) adds the mixed and third derivatives the
        momentum needs. The LM Jacobian costs 0.49 s at 740 residuals × 841 parameters, 4.6×
        less than two ``jacfwd`` levels over (u, v, p) (2.23 s; same values to 1e-12).
        """
        net = model.net

        def jet(pt: Tensor) -> Tensor:  # (10,): ψ p | ψ_x p_x ψ_y p_y | ψ_xx p_xx ψ_yy p_yy
            d = net.derivatives(pt[None])
            return torch.cat([d.u[0], d.du[0].reshape(-1), d.d2u[0].reshape(-1)])

        j = vmap(jet)(x)  # (N, 10)
        dj = vmap(jacfwd(jet))(x)  # (N, 10, 2): ∂/∂x, ∂/∂y of every slot
        psi_x, p_x, psi_y, p_y = j[:, 2], j[:, 3], j[:, 4], j[:, 5]
        psi_xx, psi_yy, psi_xy = j[:, 6], j[:, 8], dj[:, 4, 0]
        u, v = psi_y, -psi_x
        if k == 0:  # u_x = ψ_xy, u_y = ψ_yy, ∇²u = ψ_xxy + ψ_yyy
            return u * psi_xy + v * psi_yy + p_x - self.nu() * (dj[:, 6, 1] + dj[:, 8, 1])
        # v_x = −ψ_xx, v_y = −ψ_xy, ∇²v = −(ψ_xxx + ψ_xyy)
        return -u * psi_xx - v * psi_xy + p_y + self.nu() * (dj[:, 6, 0] + dj[:, 8, 0])

    def terms(self) -> dict[str, Term]:
        def field(k: int, source: str) -> Term:
            pts, vals = (self.sensors, self.readings[:, k]) if source == "sensor" else (self.boundary, self.boundary_uv[:, k])
            return Term(lambda m, p, v, k=k: m(p)[:, k] - v, (pts, vals))

        out = {"mom_x": Term(lambda m, x: self._momentum(m, x, 0), (self.interior,)),
               "mom_y": Term(lambda m, x: self._momentum(m, x, 1), (self.interior,))}
        for k, name in enumerate(("u", "v", "p")):
            out[f"sensor_{name}"] = field(k, "sensor")
        out["bc_u"], out["bc_v"] = field(0, "bc"), field(1, "bc")
        return out


@dataclass(frozen=True)
class InverseResult:
    rel_l2: float  # (u, v, p) on the evaluation grid against the exact flow
    rel_l2_linear: float  # the POD/QR linear estimate from the same readings
    re: float
    re_error: float  # relative
    guard: GuardResult
    seconds: float
    placement: Placement
    loss: float


def sensor_readings(cfg: FlowInverseConfig) -> tuple[Placement, Any, np.ndarray, np.ndarray, np.ndarray]:
    """Placement on the u-field POD basis of a Re family, the sensors' (x, y), and noisy
    readings of (u, v, p) there: (placement, basis, coords (K, 2), readings (K, 3), truth (n², 3))."""
    snaps, grid, _ = flows.snapshots("kovasznay", cfg.grid, cfg.snapshots, "u", dtype=np.float64)
    basis = pod_basis(snaps, min(cfg.modes, cfg.snapshots))
    placement = place(basis, cfg.k, cfg.placement, seed=cfg.seed)
    pts = grid.points()
    truth = np.stack(flows.kovasznay(pts[:, 0], pts[:, 1], cfg.re), 1)
    idx = np.asarray(placement.indices)
    rng = np.random.default_rng(10_000 + cfg.seed)
    span = truth.max(0) - truth.min(0)
    readings = truth[idx] + cfg.noise * span * rng.standard_normal((len(idx), 3))
    return placement, basis, pts[idx], readings, truth


def solve(cfg: FlowInverseConfig, progress: Any = None) -> tuple[nn.Module, InverseResult]:
    """Train the (u, v, p) network and Re from the sensors; the model and every figure."""
    from cpikan.nn.chebykan import ScaledCPIKAN
    from cpikan.train.lm import LevenbergMarquardt, ResidualJacobian

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    placement, basis, coords, readings, truth = sensor_readings(cfg)
    x0, x1, y0, y1 = flows.KOVASZNAY_GRID
    model = DivergenceFree(ScaledCPIKAN([2, *[cfg.width] * cfg.depth, 2], cfg.degree, (x0, y0), (x1, y1),
                                        dtype="float64", seed=cfg.seed))
    problem = KovasznayInverse(cfg, torch.as_tensor(coords), torch.as_tensor(readings), gen)
    terms = problem.terms()
    weights = {k: 1.0 if k.startswith("sensor") else cfg.physics_weight for k in terms}
    params = [*model.parameters(), problem.log_re]

    def loss() -> Tensor:
        return sum(weights[k] * t.residuals(model).square().mean() for k, t in terms.items())

    opt = torch.optim.Adam(params, lr=cfg.lr)
    for step in range(cfg.adam_steps):
        opt.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        opt.step()
        if progress is not None:
            progress("adam", step, float(value.detach()), float(problem.log_re.detach().exp()))
    if cfg.lm_steps:
        jac = ResidualJacobian(model, problem, params)
        lm = LevenbergMarquardt(params)
        for step in range(cfg.lm_steps):
            res = lm.step(lambda: jac(terms, weights), lambda: float(loss()))
            if progress is not None:
                progress("lm", step, res.loss, float(problem.log_re.detach().exp()))
            if not res.moved:
                break
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        final = float(loss())
    re = float(problem.log_re.detach().exp())
    case = FlowCase("kovasznay", re=cfg.re, n=48, sides=cfg.kept_sides)
    guard = check_flow(model, case)
    grid = case.interior()
    with torch.no_grad():
        pred = model(grid)
    exact = case.exact(grid)
    rel = float((pred - exact).norm() / exact.norm())
    linear = _linear_estimate(cfg, placement, basis, readings, truth)
    return model, InverseResult(rel, linear, re, abs(re - cfg.re) / cfg.re, guard, seconds, placement, final)


def _linear_estimate(cfg: FlowInverseConfig, placement: Placement, basis: Any, readings: np.ndarray,
                     truth: np.ndarray) -> float:
    """Relative L2 of (u, v, p) from the linear POD estimate (one basis per field, same sensors)."""
    errs, norms = 0.0, 0.0
    for k, name in enumerate(flows.FIELDS):
        b = basis if k == 0 else pod_basis(flows.snapshots("kovasznay", cfg.grid, cfg.snapshots, name,
                                                           dtype=np.float64)[0], basis.rank)
        p = placement if k == 0 else Placement(placement.indices, placement.method, b.digest, placement.points)
        est = reconstruct(b, p, readings[:, k])
        errs += float(np.sum((est - truth[:, k]) ** 2))
        norms += float(np.sum(truth[:, k] ** 2))
    return math.sqrt(errs / norms)
