"""A whole flow field, and its Reynolds number, from K point sensors and the Navier–Stokes equations.

A Scaled-cPIKAN maps (x, y) — or (x, y, t) for the unsteady Taylor–Green vortex — to a
stream function ψ and the pressure p, and the velocity is u = ∂ψ/∂y, v = −∂ψ/∂x
(:class:`DivergenceFree`): ∇·u = 0 holds by construction, to rounding, instead of being one
more loss term that ends near 1e-4 (measured with (u, v, p) outputs and a divergence term:
6e-4 RMS after 400 LM steps, 60× over seed 003's 1e-5 red line). It is fitted, in float64, to
- the K sensors' readings of (u, v, p) (at ``sensor_times`` times if unsteady), with noise
  (a fraction of each field's range);
- the Navier–Stokes momentum residual ∂u/∂t + u·∇u + ∇p − ∇²u/Re on interior points (third
  derivatives of ψ by one ``torch.func.jacfwd`` level over the jet), with Re an unknown
  (trained as log Re);
- Dirichlet data on the boundary sides that are *kept* (by default the outlet x = x₁ is
  withheld, so the sensors carry what the physics alone cannot), and normal-gradient
  (Neumann, outflow) data on ``neumann_sides`` if any; no initial condition: the sensors'
  time series stand in for it;
with Levenberg–Marquardt (:mod:`cpikan.train.lm`; optionally Adam first): every term is
pointwise, so the Jacobian is one ``vmap`` pass. With ``prior_steps`` the network first fits
the linear POD estimate: where boundary data are withheld the problem has more than one
basin, and from a random start Re can run off to infinity (ν → 0 lowers the residual while
the field is still wrong). Sensors are placed on the POD bases of the flow family's u, v and
p (:mod:`cpikan.sensors.placement`). The same readings also give the linear POD estimate, so
what the physics adds is measured, not assumed.
"""

from __future__ import annotations

import functools
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
from cpikan.sensors.flows import FLOWS
from cpikan.sensors.guard import (
    NORMALS,
    SIDES,
    FlowCase,
    GuardResult,
    check_flow,
    normal_derivative,
    side_points,
)
from cpikan.sensors.placement import METHODS, Placement, place, reconstruct
from cpikan.sensors.pod import pod_basis


@dataclass
class FlowInverseConfig:
    flow: str = choice("kovasznay", FLOWS)  # steady Kovasznay, or the unsteady Taylor–Green vortex
    re: float = bounded(40.0, gt=0)  # the true Reynolds number (generates the readings)
    re_init: float = bounded(20.0, gt=0)  # the starting guess
    t_end: float = bounded(1.0, gt=0)  # Taylor–Green: times [0, t_end]
    n_times: int = bounded(4, ge=2)  # Taylor–Green: time levels of the interior and boundary points
    sensor_times: int = bounded(5, ge=1)  # Taylor–Green: readings per sensor, evenly over [0, t_end]
    initial: bool = False  # Taylor–Green: (u, v) at t = 0 given (n_boundary² points), as Dirichlet data
    k: int = bounded(12, ge=1)
    placement: str = choice("qr", METHODS)
    noise: float = bounded(0.01, ge=0)  # sensor noise, a fraction of each field's range
    kept_sides: str = "bottom,top,left"  # boundary sides with Dirichlet data (right = outlet withheld)
    neumann_sides: str = ""  # sides with normal-gradient data ∂(u, v)/∂n (e.g. "right": an outflow condition)
    grid: int = bounded(64, ge=8)  # the placement grid (n × n) and the POD family's
    snapshots: int = bounded(40, ge=2)
    modes: int = bounded(8, ge=1)
    width: int = bounded(10, ge=1)
    depth: int = bounded(2, ge=1, le=6)
    degree: int = bounded(5, ge=1, le=16)
    n_interior: int = bounded(32, ge=4)  # interior points per side (a jittered n × n grid)
    n_boundary: int = bounded(32, ge=2)  # points per kept or Neumann side (per time level)
    # LM steps fitting the network to the linear POD estimate before the physics (0: a random
    # start); where the physics leaves the field open (a side's data withheld), it starts
    # from what the sensors and the flow family say
    prior_steps: int = bounded(0, ge=0)
    # what those steps fit: the linear estimate, or the flow family's mean field (no reading:
    # every placement starts alike, and random placement's Re did not run off, docs/domain.md)
    prior: str = choice("linear", ("linear", "mean"))
    adam_steps: int = bounded(0, ge=0)
    lr: float = bounded(5e-3, gt=0)
    lm_steps: int = bounded(600, ge=0)
    # on the PDE terms; sensors weigh 1. 1e5, not 1e3: at 1e3 the noisy sensors win, and the
    # residual between the points climbs back (3.5e-4 at 200 LM steps, 2.7e-3 at 450)
    physics_weight: float = bounded(1e5, gt=0)
    #: on the Dirichlet and Neumann terms (physics_weight weighed them too before this field)
    boundary_weight: float = bounded(1e5, gt=0, before=lambda run: run.get("physics_weight", 1000.0))
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        validate(self)
        from cpikan.config import ConfigError

        for name in ("kept_sides", "neumann_sides"):
            sides = getattr(self, name)
            bad = [s for s in sides.split(",") if s not in SIDES] if sides or name == "kept_sides" else []
            if bad:
                raise ConfigError(name, f"unknown side {bad[0]!r}; allowed: one or more of "
                                  f"{', '.join(SIDES)}, comma-separated (the physics needs some boundary data)")
        both = set(self.kept_sides.split(",")) & set(filter(None, self.neumann_sides.split(",")))
        if both:
            raise ConfigError("neumann_sides", f"side {sorted(both)[0]!r} is also in kept_sides; a side "
                              "carries Dirichlet or Neumann data, not both")


class DivergenceFree(nn.Module):
    """(u, v, p) = (∂ψ/∂y, −∂ψ/∂x, p) from a network of (ψ, p): divergence-free by construction.

    Unsteady: ``gauge_degree`` ≥ 0 adds a pressure gauge g(t) = Σ a_k T_k(τ) (Chebyshev in the
    time scaled to [−1, 1]) to p. Incompressible flow fixes p only up to a function of time;
    the sensors' pressure readings fix it, but through the network alone LM moves slowly
    along that direction: after 300 steps the Taylor–Green pressure was off by a pure c(t)
    of 0.015 (7 % of p's RMS; u and v at 1e-4), equal to the sensors' mean misfit at each
    reading time. With g(t) as its own parameters the data set it directly.
    """

    def __init__(self, net: nn.Module, gauge_degree: int = -1, t_end: float = 1.0) -> None:
        super().__init__()
        self.net, self.t_end = net, t_end
        if gauge_degree >= 0:
            self.gauge = nn.Parameter(torch.zeros(gauge_degree + 1, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        d = self.net.derivatives(x)
        p = d.u[:, 1]
        if hasattr(self, "gauge"):
            tau = 2 * x[:, 2] / self.t_end - 1
            basis = [torch.ones_like(tau), tau]
            while len(basis) < len(self.gauge):
                basis.append(2 * tau * basis[-1] - basis[-2])
            p = p + torch.stack(basis[:len(self.gauge)], 1) @ self.gauge
        return torch.stack([d.dx(1, 0), -d.dx(0, 0), p], 1)


def _d1(i: int, c: int = 0) -> int:
    """Slot of ∂_i (ψ, p)[c] in :meth:`FlowInverse.jets`."""
    return 2 + 2 * i + c


def _d2(i: int, d: int) -> int:
    """Slot of ∂_ii ψ in :meth:`FlowInverse.jets` over d input coordinates."""
    return 2 + 2 * d + 2 * i


class FlowInverse(nn.Module):
    """The loss terms of one flow; Re is this module's parameter, so LM trains it with the model.

    Trained as log Re. From a random one-layer network the first LM steps sent it off to
    1e21 (the momentum residual is smallest with ν → 0 while the field is still wrong), and
    it never came back; with two layers it did not happen. Holding it at the guess for 20
    steps slowed the default case (2.3e-3 vs 8.6e-4 momentum residual after 200 steps), and
    a bounded Re = guess · 10^tanh θ stuck at its bound (tanh′ vanishes there).
    """

    def __init__(self, cfg: FlowInverseConfig, sensors: Tensor, readings: Tensor, gen: torch.Generator) -> None:
        super().__init__()
        self.case = flow_case(cfg)
        self.log_re = nn.Parameter(torch.tensor(math.log(cfg.re_init), dtype=torch.float64))
        x0, x1, y0, y1 = self.case.bounds()
        n, f64 = cfg.n_interior, torch.float64
        cell = torch.tensor([(x1 - x0) / n, (y1 - y0) / n], dtype=f64)
        ij = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).reshape(-1, 2)
        levels = cfg.n_times if self.case.unsteady else 1
        pts = []
        for level in range(levels):  # a jittered grid per time level (jittered times too)
            xy = torch.tensor([x0, y0], dtype=f64) + (ij + torch.rand(n * n, 2, generator=gen, dtype=f64)) * cell
            if self.case.unsteady:
                t = (level + torch.rand(n * n, 1, generator=gen, dtype=f64)) * cfg.t_end / levels
                xy = torch.cat([xy, t], 1)
            pts.append(xy)
        self.interior = torch.cat(pts)
        self.boundary, _ = self._sides(cfg.kept_sides, cfg)
        if cfg.initial and self.case.unsteady:  # the t = 0 face of the space-time box
            g = flows.Grid(cfg.n_boundary, x0, x1, y0, y1).points()
            t0 = torch.cat([torch.as_tensor(g), torch.zeros(len(g), 1, dtype=f64)], 1)
            self.boundary = torch.cat([self.boundary, t0])
        self.boundary_uv = self.case.exact(self.boundary)[:, :2]
        self.neumann, self.normals = self._sides(cfg.neumann_sides, cfg)
        self.neumann_duv = normal_derivative(self.case.exact, self.neumann, self.normals).detach()
        self.sensors, self.readings = sensors, readings

    def _sides(self, sides: str, cfg: FlowInverseConfig) -> tuple[Tensor, Tensor]:
        """``cfg.n_boundary`` points per side (at ``n_times`` times if unsteady) and their normals."""
        f64 = torch.float64
        s = torch.linspace(0, 1, cfg.n_boundary, dtype=f64)  # both corners: each side's data reaches them
        names = [k for k in sides.split(",") if k]
        width = 3 if self.case.unsteady else 2
        if not names:
            return torch.empty(0, width, dtype=f64), torch.empty(0, 2, dtype=f64)
        pts = torch.cat([side_points(self.case.bounds(), k, s) for k in names])
        normals = torch.cat([torch.tensor(NORMALS[k], dtype=f64).expand(len(s), 2) for k in names])
        if self.case.unsteady:
            ts = torch.linspace(0, cfg.t_end, cfg.n_times, dtype=f64)
            pts = torch.cat([torch.cat([pts, torch.full((len(pts), 1), float(t), dtype=f64)], 1) for t in ts])
            normals = normals.repeat(len(ts), 1)
        return pts, normals

    def re(self) -> Tensor:
        return torch.exp(self.log_re)

    def nu(self) -> Tensor:
        return 1.0 / self.re()

    @staticmethod
    def jets(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """ψ, p with their gradients and pure second derivatives (the jet, one pass), and one
        forward-mode level over it (``jacfwd``) for the mixed and third derivatives. The LM
        Jacobian of the momentum costs 0.49 s at 740 residuals × 841 parameters this way,
        4.6× less than two ``jacfwd`` levels over (u, v, p) (2.23 s; same values to 1e-12).
        Slots: ψ p | ∂_i ψ, ∂_i p for each input i | ∂_ii ψ, ∂_ii p."""
        net = model.net

        def jet(pt: Tensor) -> Tensor:
            d = net.derivatives(pt[None])
            return torch.cat([d.u[0], d.du[0].reshape(-1), d.d2u[0].reshape(-1)])

        return vmap(jet)(x), vmap(jacfwd(jet))(x)

    def momentum(self, j: Tensor, dj: Tensor, k: int) -> Tensor:
        """Component k of ∂u/∂t + u·∇u + ∇p − ν∇²u with (u, v) = (ψ_y, −ψ_x), from ``jets``."""
        d = dj.shape[2]

        u, v = j[:, _d1(1)], -j[:, _d1(0)]
        psi_xx, psi_yy, psi_xy = j[:, _d2(0, d)], j[:, _d2(1, d)], dj[:, _d1(1), 0]
        if k == 0:  # u_x = ψ_xy, u_y = ψ_yy, ∇²u = ψ_xxy + ψ_yyy, u_t = ψ_yt
            out = u * psi_xy + v * psi_yy + j[:, _d1(0, 1)] - self.nu() * (dj[:, _d2(0, d), 1] + dj[:, _d2(1, d), 1])
            return out + dj[:, _d1(1), 2] if d == 3 else out
        # v_x = −ψ_xx, v_y = −ψ_xy, ∇²v = −(ψ_xxx + ψ_xyy), v_t = −ψ_xt
        out = -u * psi_xx - v * psi_xy + j[:, _d1(1, 1)] + self.nu() * (dj[:, _d2(0, d), 0] + dj[:, _d2(1, d), 0])
        return out - dj[:, _d1(0), 2] if d == 3 else out

    @staticmethod
    def flux(j: Tensor, dj: Tensor, normals: Tensor, k: int) -> Tensor:
        """∂u/∂n (k = 0) or ∂v/∂n (k = 1): ∇u = (ψ_xy, ψ_yy), ∇v = −(ψ_xx, ψ_xy)."""
        d = dj.shape[2]
        psi_xy = dj[:, _d1(1), 0]
        if k == 0:
            return psi_xy * normals[:, 0] + j[:, _d2(1, d)] * normals[:, 1]
        return -(j[:, _d2(0, d)] * normals[:, 0] + psi_xy * normals[:, 1])

    def terms(self) -> dict[str, Term]:
        """Pointwise residuals for the LM Jacobian (one row at a time)."""
        def field(k: int, source: str) -> Term:
            pts, vals = (self.sensors, self.readings[:, k]) if source == "sensor" else (self.boundary, self.boundary_uv[:, k])
            return Term(lambda m, p, v, k=k: m(p)[:, k] - v, (pts, vals))

        out = {f"mom_{c}": Term(lambda m, x, k=k: self.momentum(*self.jets(m, x), k), (self.interior,))
               for k, c in enumerate("xy")}
        for k, name in enumerate(("u", "v", "p")):
            out[f"sensor_{name}"] = field(k, "sensor")
        out["bc_u"], out["bc_v"] = field(0, "bc"), field(1, "bc")
        if len(self.neumann):
            for k, name in enumerate(("u", "v")):
                out[f"bc_d{name}"] = Term(lambda m, x, n, g, k=k: self.flux(*self.jets(m, x), n, k) - g[:, k],
                                          (self.neumann, self.normals, self.neumann_duv))
        return out

    @torch.no_grad()
    def residuals(self, model: nn.Module) -> dict[str, Tensor]:
        """Every term's residuals as ``terms()`` gives them, with one jet pass per point set
        (the loss the LM line search evaluates: 4× cheaper than term by term)."""
        j, dj = self.jets(model, self.interior)
        out = {"mom_x": self.momentum(j, dj, 0), "mom_y": self.momentum(j, dj, 1)}
        at_sensors, at_boundary = model(self.sensors), model(self.boundary)
        for k, name in enumerate(("u", "v", "p")):
            out[f"sensor_{name}"] = at_sensors[:, k] - self.readings[:, k]
        out["bc_u"], out["bc_v"] = at_boundary[:, 0] - self.boundary_uv[:, 0], at_boundary[:, 1] - self.boundary_uv[:, 1]
        if len(self.neumann):
            j, dj = self.jets(model, self.neumann)
            for k, name in enumerate(("u", "v")):
                out[f"bc_d{name}"] = self.flux(j, dj, self.normals, k) - self.neumann_duv[:, k]
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


def flow_case(cfg: FlowInverseConfig) -> FlowCase:
    """The flow ``cfg`` reconstructs, as the guard checks it (on a 48 × 48 grid)."""
    return FlowCase(cfg.flow, re=cfg.re, n=48, t_end=cfg.t_end, n_t=3, sides=cfg.kept_sides,
                    neumann_sides=cfg.neumann_sides)


def sensor_times(cfg: FlowInverseConfig) -> np.ndarray:
    """The times the sensors read at: one (t = 0, ignored) for a steady flow."""
    return np.linspace(0.0, cfg.t_end, cfg.sensor_times) if cfg.flow == "taylor_green" else np.zeros(1)


def sensor_readings(cfg: FlowInverseConfig) -> tuple[Placement, list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """Placement on the POD bases of the flow family's u, v and p (each sensor reads all three),
    the sensors' coordinates and noisy readings of (u, v, p) there, at every sensor time:
    (placement, bases, coords (T·K, 2 or 3), readings (T·K, 3), truth (T, n², 3)); rows
    time-major."""
    case = flow_case(cfg)
    bases = []
    for name in flows.FIELDS:
        snaps, grid, _ = flows.snapshots(cfg.flow, cfg.grid, cfg.snapshots, name, dtype=np.float64,
                                         bounds=case.bounds())
        bases.append(pod_basis(snaps, min(cfg.modes, cfg.snapshots)))
    placement = place(bases, cfg.k, cfg.placement, seed=cfg.seed)
    pts = grid.points()
    idx = np.asarray(placement.indices)
    times = sensor_times(cfg)
    truth, coords = [], []
    for t in times:
        at = pts if not case.unsteady else np.concatenate([pts, np.full((len(pts), 1), t)], 1)
        truth.append(case.exact(torch.as_tensor(at)).numpy())
        coords.append(at[idx])
    truth_arr = np.stack(truth)
    rng = np.random.default_rng(10_000 + cfg.seed)
    span = truth_arr.max((0, 1)) - truth_arr.min((0, 1))
    clean = truth_arr[:, idx].reshape(-1, 3)
    readings = clean + cfg.noise * span * rng.standard_normal(clean.shape)
    return placement, bases, np.concatenate(coords), readings, truth_arr


def solve(cfg: FlowInverseConfig, progress: Any = None,
          start: dict[str, Tensor] | None = None) -> tuple[nn.Module, InverseResult]:
    """Train the (u, v, p) network and Re from the sensors; the model and every figure.
    ``start``: tensors to continue from (``model.<name>`` and ``log_re``, as
    :func:`cpikan.sensors.reference.save_reference` writes them) instead of a fresh network."""
    from cpikan.nn.chebykan import ScaledCPIKAN
    from cpikan.train.lm import LevenbergMarquardt, ResidualJacobian

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    placement, bases, coords, readings, truth = sensor_readings(cfg)
    estimate = linear_estimate(placement, bases, readings, len(truth))
    problem = FlowInverse(cfg, torch.as_tensor(coords), torch.as_tensor(readings), gen)
    x0, x1, y0, y1 = problem.case.bounds()
    lo, hi = ((x0, y0, 0.0), (x1, y1, cfg.t_end)) if problem.case.unsteady else ((x0, y0), (x1, y1))
    gauge = cfg.sensor_times - 1 if problem.case.unsteady else -1
    model = DivergenceFree(ScaledCPIKAN([len(lo), *[cfg.width] * cfg.depth, 2], cfg.degree, lo, hi,
                                        dtype="float64", seed=cfg.seed), gauge, cfg.t_end)
    terms = problem.terms()
    weights = {k: 1.0 if k.startswith("sensor") else cfg.boundary_weight if k.startswith("bc") else cfg.physics_weight
               for k in terms}
    if start is not None:
        model.load_state_dict({k.removeprefix("model."): v for k, v in start.items() if k.startswith("model.")})
        with torch.no_grad():
            problem.log_re.copy_(start["log_re"].reshape(()))
    params = [*model.parameters(), problem.log_re]

    def loss() -> Tensor:
        return sum(weights[k] * t.residuals(model).square().mean() for k, t in terms.items())

    def loss_now() -> float:
        return float(sum(weights[k] * r.square().mean() for k, r in problem.residuals(model).items()))

    def re_now() -> float:
        return float(problem.re().detach())

    if cfg.prior_steps:
        target = estimate
        if cfg.prior == "mean":  # no reading in it: every placement starts alike
            target = np.stack([np.stack([b.mean for b in bases], -1)] * len(truth))
        _fit_prior(model, problem, cfg, target)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    for step in range(cfg.adam_steps):
        opt.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        opt.step()
        if progress is not None:
            progress("adam", step, float(value.detach()), re_now())
    if cfg.lm_steps:
        jac = ResidualJacobian(model, problem, params)
        lm = LevenbergMarquardt(params)
        for step in range(cfg.lm_steps):
            res = lm.step(functools.partial(jac, terms, weights), loss_now)
            if progress is not None:
                progress("lm", step, res.loss, re_now())
            if not res.moved:
                break
    seconds = time.perf_counter() - t0
    final, re = loss_now(), re_now()
    case = problem.case
    guard = check_flow(model, case)
    grid = case.interior()
    with torch.no_grad():
        pred = model(grid)
    exact = case.exact(grid)
    rel = float((pred - exact).norm() / exact.norm())
    linear = float(np.linalg.norm(estimate - truth) / np.linalg.norm(truth))
    return model, InverseResult(rel, linear, re, abs(re - cfg.re) / cfg.re, guard, seconds, placement, final)


def linear_estimate(placement: Placement, bases: list[Any], readings: np.ndarray, times: int) -> np.ndarray:
    """(u, v, p) on the placement grid from the linear POD estimate (one basis per field, same
    sensors, each sensor time on its own): (times, n², 3)."""
    per_time = readings.reshape(times, -1, 3)
    return np.stack([np.stack([reconstruct(basis, placement, per_time[t, :, k]) for k, basis in enumerate(bases)], -1)
                     for t in range(times)])


def _fit_prior(model: nn.Module, problem: FlowInverse, cfg: FlowInverseConfig, estimate: np.ndarray) -> None:
    """LM steps fitting (u, v, p) to ``estimate`` (the linear one, or the family's mean) on
    every (grid // 16)-th line of the placement grid (about 16 × 16 points, at each sensor
    time): the physics phase then starts from the field the sensors, or the family, imply."""
    from cpikan.train.lm import LevenbergMarquardt, ResidualJacobian

    case, f64 = problem.case, torch.float64
    grid = flows.Grid(cfg.grid, *case.bounds())
    keep = np.zeros((cfg.grid, cfg.grid), bool)
    stride = max(1, cfg.grid // 16)
    keep[::stride, ::stride] = True
    keep = keep.ravel()
    xy = grid.points()[keep]
    pts, vals = [], []
    for t, field in zip(sensor_times(cfg), estimate):
        pts.append(np.concatenate([xy, np.full((len(xy), 1), t)], 1) if case.unsteady else xy)
        vals.append(field[keep])
    x, v = torch.as_tensor(np.concatenate(pts), dtype=f64), torch.as_tensor(np.concatenate(vals), dtype=f64)
    terms = {f"prior_{n}": Term(lambda m, p, y, k=k: m(p)[:, k] - y, (x, v[:, k])) for k, n in enumerate("uvp")}
    weights = dict.fromkeys(terms, 1.0)

    def loss_now() -> float:
        with torch.no_grad():
            return float((model(x) - v).square().mean(0).sum())

    params = list(model.parameters())
    jac, lm = ResidualJacobian(model, problem, params), LevenbergMarquardt(params)
    for _ in range(cfg.prior_steps):
        if not lm.step(functools.partial(jac, terms, weights), loss_now).moved:
            break
