"""The physics guard: one definition of the red lines a trained flow model must keep.

Every check is computed for *any* model mapping (N, d) coordinates — (x, y) for a steady
flow, (x, y, t) for an unsteady one — to (N, 3) = (u, v, p), with derivatives by autograd,
on an evaluation grid and on the domain boundary, against the flow's exact solution
(:mod:`cpikan.sensors.flows`). Thresholds live in a versioned file (``guard.toml`` beside
this module, or one of the caller's): above ``red`` a check fails, above ``yellow`` it warns.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cpikan.sensors import flows
from cpikan.sensors.placement import SensorError

CHECKS = ("momentum_residual", "divergence", "dirichlet_error", "neumann_error", "reconstruction_error", "nonfinite")
SIDES = ("bottom", "right", "top", "left")
NORMALS = {"bottom": (0.0, -1.0), "right": (1.0, 0.0), "top": (0.0, 1.0), "left": (-1.0, 0.0)}  # outward
DEFAULT_THRESHOLDS = Path(__file__).with_name("guard.toml")


@dataclass(frozen=True)
class Thresholds:
    version: int
    red: dict[str, float]
    yellow: dict[str, float] = field(default_factory=dict)


def load_thresholds(path: Path = DEFAULT_THRESHOLDS) -> Thresholds:
    """The thresholds file; an unknown check or a missing red line is an error."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SensorError(f"thresholds {path}: unreadable ({exc})") from None
    checks = doc.get("checks", {})
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise SensorError(f"thresholds {path}: unknown check {unknown[0]!r}; allowed: {', '.join(CHECKS)}")
    missing = [c for c in CHECKS if "red" not in checks.get(c, {})]
    if missing:
        raise SensorError(f"thresholds {path}: check {missing[0]!r} has no red line")
    return Thresholds(int(doc.get("version", 0)), {c: float(checks[c]["red"]) for c in CHECKS},
                      {c: float(v["yellow"]) for c, v in checks.items() if "yellow" in v})


@dataclass(frozen=True)
class FlowCase:
    """The flow a model claims to represent, and where it is checked."""

    flow: str  # kovasznay | taylor_green
    re: float
    n: int = 32  # evaluation grid n × n (× n_t times for Taylor–Green)
    t_end: float = 1.0  # Taylor–Green: times in [0, t_end]
    n_t: int = 3
    # Each boundary check runs where the model was given that condition, as seed 003 words
    # them ("Dirichlet boundary: absolute error", "Neumann boundary: gradient error"): a
    # withheld side is reconstructed, and reconstruction_error judges it. With no Neumann
    # side the Neumann check has nothing to check and reports "n/a".
    sides: str = "bottom,right,top,left"  # Dirichlet sides
    neumann_sides: str = "bottom,right,top,left"

    def __post_init__(self) -> None:
        for name, value, empty_ok in (("sides", self.sides, False), ("neumann_sides", self.neumann_sides, True)):
            bad = [s for s in value.split(",") if s not in SIDES] if value or not empty_ok else []
            if bad:
                raise SensorError(f"{name}: unknown side {bad[0]!r}; allowed: comma-separated {', '.join(SIDES)}")

    @property
    def unsteady(self) -> bool:
        return self.flow == "taylor_green"

    def bounds(self) -> tuple[float, float, float, float]:
        return flows.domain(self.flow)

    def exact(self, pts: Tensor) -> Tensor:
        if self.flow == "kovasznay":
            return torch.stack(flows.kovasznay(pts[:, 0], pts[:, 1], self.re), 1)
        return torch.stack(flows.taylor_green(pts[:, 0], pts[:, 1], pts[:, 2], self.re), 1)

    def interior(self, dtype: torch.dtype = torch.float64) -> Tensor:
        x0, x1, y0, y1 = self.bounds()
        g = flows.Grid(self.n, x0, x1, y0, y1).points()
        pts = torch.as_tensor(g, dtype=dtype)
        return self._with_times(pts)

    def boundary(self, dtype: torch.dtype = torch.float64, sides: str | None = None) -> tuple[Tensor, Tensor]:
        """Points on ``sides`` (default: the Dirichlet ``sides``) and their outward normals."""
        sides = self.sides if sides is None else sides
        if not sides:
            return self._with_times(torch.empty(0, 2, dtype=dtype)), torch.empty(0, 2, dtype=dtype)
        s = torch.linspace(0, 1, self.n + 1, dtype=dtype)[:-1]
        names = sides.split(",")  # counter-clockwise: each corner once
        pts = torch.cat([side_points(self.bounds(), name, 1 - s if name in ("top", "left") else s) for name in names])
        normals = torch.cat([torch.tensor(NORMALS[name], dtype=dtype).expand(len(s), 2) for name in names])
        reps = self.n_t if self.unsteady else 1
        return self._with_times(pts), normals.repeat(reps, 1)

    def _with_times(self, pts: Tensor) -> Tensor:
        if not self.unsteady:
            return pts
        ts = torch.linspace(0, self.t_end, self.n_t, dtype=pts.dtype)
        return torch.cat([torch.cat([pts, torch.full((len(pts), 1), float(t), dtype=pts.dtype)], 1) for t in ts])


def side_points(bounds: tuple[float, float, float, float], side: str, s: Tensor) -> Tensor:
    """(len(s), 2) points on one side of the box at parameters s ∈ [0, 1] (left to right,
    bottom to top)."""
    x0, x1, y0, y1 = bounds
    if side in ("bottom", "top"):
        return torch.stack([x0 + (x1 - x0) * s, torch.full_like(s, y0 if side == "bottom" else y1)], 1)
    return torch.stack([torch.full_like(s, x0 if side == "left" else x1), y0 + (y1 - y0) * s], 1)


def _grad(out: Tensor, pts: Tensor) -> Tensor:
    return torch.autograd.grad(out.sum(), pts, create_graph=True)[0]


def navier_stokes(model: Callable[[Tensor], Tensor], pts: Tensor, re: float | Tensor,
                  unsteady: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(momentum residual (N, 2), divergence (N,), outputs (N, 3)) by autograd at ``pts``."""
    pts = pts.detach().requires_grad_(True)
    out = model(pts)
    u, v, p = out[:, 0], out[:, 1], out[:, 2]
    du, dv, dp = _grad(u, pts), _grad(v, pts), _grad(p, pts)
    u_xx, u_yy = _grad(du[:, 0], pts)[:, 0], _grad(du[:, 1], pts)[:, 1]
    v_xx, v_yy = _grad(dv[:, 0], pts)[:, 0], _grad(dv[:, 1], pts)[:, 1]
    nu = 1.0 / re
    mx = u * du[:, 0] + v * du[:, 1] + dp[:, 0] - nu * (u_xx + u_yy)
    my = u * dv[:, 0] + v * dv[:, 1] + dp[:, 1] - nu * (v_xx + v_yy)
    if unsteady:
        mx, my = mx + du[:, 2], my + dv[:, 2]
    return torch.stack([mx, my], 1), du[:, 0] + dv[:, 1], out


def normal_derivative(fn: Callable[[Tensor], Tensor], pts: Tensor, normals: Tensor) -> Tensor:
    """(N, 2): ∂(u, v)/∂n of ``fn`` (points → (N, ≥ 2)) at ``pts``, by autograd."""
    if not len(pts):
        return torch.empty(0, 2, dtype=pts.dtype)
    pts = pts.detach().requires_grad_(True)
    out = fn(pts)
    return torch.stack([(_grad(out[:, k], pts)[:, :2] * normals).sum(1) for k in (0, 1)], 1)


@dataclass(frozen=True)
class GuardResult:
    values: dict[str, float]
    status: dict[str, str]  # green | yellow | red | n/a (no side carries the condition)
    thresholds_version: int

    @property
    def failed(self) -> list[str]:
        return [c for c in CHECKS if self.status[c] == "red"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def metrics(self) -> dict[str, float]:
        """Flat figures for a tracker: guard/<check> values (n/a ones left out) and guard/red_count."""
        return {**{f"guard/{c}": v for c, v in self.values.items() if self.status[c] != "n/a"},
                "guard/red_count": float(len(self.failed))}

    def summary(self) -> str:
        return " ".join(f"{c}={self.values[c]:.2e}({self.status[c]})" for c in CHECKS)


def check_flow(model: Callable[[Tensor], Tensor], case: FlowCase, thresholds: Thresholds | None = None,
               dtype: torch.dtype = torch.float64) -> GuardResult:
    """Every check for ``model`` on ``case``; nothing is trained or changed."""
    th = thresholds or load_thresholds()
    pts = case.interior(dtype)
    mom, div, out = navier_stokes(model, pts, case.re, case.unsteady)
    exact = case.exact(pts)
    bpts, _ = case.boundary(dtype)
    bout = model(bpts)
    npts, normals = case.boundary(dtype, case.neumann_sides)
    dn, dn_exact = normal_derivative(model, npts, normals), normal_derivative(case.exact, npts, normals)
    parts = [mom, div, out, bout, dn]
    nonfinite = float(sum(int((~torch.isfinite(t)).sum()) for t in parts))

    def rms(t: Tensor) -> float:
        return float(t.detach().square().mean().sqrt())

    def amax(t: Tensor) -> float:
        return float(t.detach().abs().max()) if t.numel() else math.nan

    values = {
        "momentum_residual": rms(mom),
        "divergence": rms(div),
        "dirichlet_error": amax(bout[:, :2] - case.exact(bpts)[:, :2]),
        "neumann_error": amax(dn - dn_exact),
        "reconstruction_error": float((out - exact).detach().norm() / exact.norm()),
        "nonfinite": nonfinite,
    }
    status = {}
    for c, v in values.items():
        if math.isnan(v) and c in ("dirichlet_error", "neumann_error"):
            status[c] = "n/a"  # no side carries this condition
        elif not math.isfinite(v) or v > th.red[c]:
            status[c] = "red"
        elif c in th.yellow and v > th.yellow[c]:
            status[c] = "yellow"
        else:
            status[c] = "green"
    return GuardResult(values, status, th.version)
