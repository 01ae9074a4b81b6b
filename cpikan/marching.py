"""Time marching: a time-dependent PINN trained window by window.

One network over the whole of [0, T] must learn the early dynamics before the late ones make
sense (the causality problem of PINNs), and on Allen–Cahn the late solution has fronts about
a hundredth wide. Marching splits [0, T] into ``windows`` equal spans; window k is a new
network on [t_k, t_{k+1}] whose initial condition is window k−1's prediction at t_k (the
problem's own initial condition for the first). Each window trains like an ordinary run of
``base`` (Adam, then Levenberg–Marquardt in float64), with its own seed. The error a window
leaves at its end is the next one's initial data: it is carried, not corrected, so the
per-window results show where it grows. The problem supplies ``window(t0, t1, start)``:
``Problem.window`` for any time-dependent one (the lab's own too, ``PINNConfig.time_windows``
through :func:`march`), Allen–Cahn's own for its periodic ends.

With ``hard_initial`` every window after the first is u = s(x) + (1 + t̂)·N(x, t)
(:class:`Anchored`), s the window before's end line: the initial data holds exactly on the
whole line, not at sampled points, and N only learns the change over the window, which on
Allen–Cahn's late, nearly still fronts is small. (The first window keeps fitting its initial
line: an initial condition with a corner is not a start a smooth N can move away from.)
With ``known_part`` the problem's ``known_part()`` (a fixed model with its jet, such as
Allen–Cahn's corner layer) is added to every window and the networks learn the rest; the
residual is still the whole solution's. Each exact start evaluates every window before it,
so a window's step costs grow with its index (190 s for the first window,
411 s for the tenth on Allen–Cahn, one thread beside another job); with ``end_line_nodes``
the start line is a quintic Hermite copy instead (:class:`HermiteLine`, its error between
the nodes measured and refused above 1e-10), and every window costs about the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from cpikan import diff, refs
from cpikan.config import ConfigError, bounded, canonical_json, validate
from cpikan.experiment import PINNConfig, build_model
from cpikan.multistage import StagedModel  # a weighted sum of models, jets included
from cpikan.pde import PROBLEMS, Problem, make_problem
from cpikan.train import Callback, Trainer, TrainResult, seed_everything


def _marchable() -> list[str]:
    return sorted(name for name, cls in PROBLEMS.items() if cls.time_dependent)


@dataclass
class MarchingConfig:
    base: PINNConfig = field(default_factory=lambda: PINNConfig("allen_cahn"))  # problem, per-window model and trainer
    windows: int = bounded(10, ge=1, le=1000)
    hard_initial: bool = False  # windows after the first: u = start line + (1 + t̂)·N, the initial data exact
    known_part: bool = False  # add the problem's known_part() (a singular layer) to every window
    #: with hard_initial: each start line as a quintic Hermite copy on this many nodes (checked
    #: between them to 1e-10), so a window costs the same whatever its index; 0: the exact chain
    end_line_nodes: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        if isinstance(self.base, dict):
            self.base = PINNConfig.from_dict(self.base)
        validate(self)
        if not refs.is_ref(self.base.problem) and self.base.problem not in _marchable():  # a lab's own: at build
            raise ConfigError("base.problem", f"{self.base.problem!r} has no time windows; allowed: "
                              f"{', '.join(_marchable())}")
        cls = PROBLEMS.get(self.base.problem)  # None: the lab's own (its options are the project's problems')
        if self.end_line_nodes and (self.end_line_nodes < 2 or cls is None or len(cls.coords) != 2):
            raise ConfigError("end_line_nodes", f"0, or ≥ 2 nodes on a problem with one space coordinate and "
                              f"time; got {self.end_line_nodes} on {self.base.problem!r}")
        if self.known_part and not hasattr(cls, "known_part"):
            raise ConfigError("known_part", f"{self.base.problem!r} has no known part to add")

    def to_json(self) -> str:
        return canonical_json(self)

    @classmethod
    def from_json(cls, text: str) -> MarchingConfig:
        import json

        return cls(**json.loads(text))


class MarchedModel(nn.Module):
    """u(x, t) from the window whose span holds t (a window's end time belongs to it)."""

    def __init__(self, edges: Sequence[float], windows: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.register_buffer("edges", torch.tensor(list(edges), dtype=torch.float64))
        self.windows = nn.ModuleList(windows)

    def forward(self, x: Tensor) -> Tensor:
        if len(self.windows) != len(self.edges) - 1:
            raise ValueError(f"model: {len(self.windows)} trained windows for {len(self.edges) - 1} spans")
        which = torch.bucketize(x[:, -1].double().contiguous(), self.edges[1:-1])
        out: Tensor | None = None
        for k, net in enumerate(self.windows):
            rows = which == k
            if rows.any():
                part = net(x[rows]).to(x.dtype)
                if out is None:  # as wide as the windows' outputs (a system's fields)
                    out = torch.empty(len(x), part.shape[1], dtype=x.dtype)
                out[rows] = part
        return out if out is not None else torch.empty(0, 1, dtype=x.dtype)


class EndLine(nn.Module):
    """x ↦ u(x, t_end) of a model, as a model of (x, t) constant in t (frozen)."""

    def __init__(self, net: nn.Module, t_end: float) -> None:
        super().__init__()
        self.net, self.t_end = net.requires_grad_(False), t_end

    def _at_end(self, x: Tensor) -> Tensor:
        return torch.cat([x[:, :-1], torch.full_like(x[:, -1:], self.t_end)], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self._at_end(x))

    def derivatives(self, x: Tensor) -> diff.Derivatives:
        d = self.net.derivatives(self._at_end(x))
        return diff.Derivatives(d.u, _no_time(d.du), _no_time(d.d2u))


def _no_time(d: Tensor) -> Tensor:
    return torch.cat([d[:, :-1], torch.zeros_like(d[:, -1:])], 1)


# p(s) on [0, 1] from (f0, h·f0', h²·f0'', f1, h·f1', h²·f1''): rows are the six quintic
# Hermite basis polynomials' coefficients of s⁰ … s⁵
_QUINTIC = torch.tensor([[1, 0, 0, -10, 15, -6], [0, 1, 0, -6, 8, -3], [0, 0, 0.5, -1.5, 1.5, -0.5],
                         [0, 0, 0, 10, -15, 6], [0, 0, 0, -4, 7, -3], [0, 0, 0, 0.5, -1, 0.5]], dtype=torch.float64)


class HermiteLine(nn.Module):
    """A frozen line x ↦ s(x) (one space coordinate, constant in t) as a C² piecewise quintic
    Hermite interpolant of its values, slopes and curvatures on uniform nodes.

    It stands in for an :class:`EndLine` whose model is a chain of earlier windows: that one
    costs every window before it on every evaluation, this one a table look-up. Built by
    :meth:`fit`, which measures the interpolation error between the nodes and refuses a
    line the nodes do not resolve."""

    def __init__(self, lo: float, hi: float, coeffs: Tensor) -> None:
        super().__init__()
        self.lo, self.h = lo, (hi - lo) / coeffs.shape[0]
        self.register_buffer("coeffs", coeffs)  # (intervals, 6, outputs): s⁰ … s⁵ per interval

    @classmethod
    def fit(cls, line: nn.Module, lo: float, hi: float, nodes: int, tol: float = 1e-10) -> HermiteLine:
        """Interpolate ``line`` (a model of (x, t), constant in t) on ``nodes`` points of
        [lo, hi]; raises ValueError when its error at the midpoints exceeds ``tol``·max|s|."""
        x = torch.linspace(lo, hi, nodes, dtype=torch.float64)
        with torch.no_grad():
            d = line.derivatives(torch.stack([x, torch.zeros_like(x)], 1))
        h = (hi - lo) / (nodes - 1)
        f, f1, f2 = d.u, d.du[:, 0] * h, d.d2u[:, 0] * h * h  # (nodes, outputs)
        ends = torch.stack([f[:-1], f1[:-1], f2[:-1], f[1:], f1[1:], f2[1:]], 1)  # (intervals, 6, outputs)
        out = cls(lo, hi, torch.einsum("kj,ikm->ijm", _QUINTIC, ends))
        mid = (x[:-1] + x[1:]) / 2
        with torch.no_grad():
            want = line(torch.stack([mid, torch.zeros_like(mid)], 1))
            err = float((out(torch.stack([mid, torch.zeros_like(mid)], 1)) - want).abs().max())
        scale = max(float(f.abs().max()), 1e-300)
        if not err <= tol * scale:
            raise ValueError(f"end_line_nodes: {nodes} nodes leave an interpolation error of {err:.1e} "
                             f"(> {tol:.0e} of max |s| = {scale:.2e}); raise it, or 0 to evaluate the windows exactly")
        return out

    def _local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pos = (x[:, 0] - self.lo) / self.h
        i = pos.floor().clamp(0, self.coeffs.shape[0] - 1)
        return self.coeffs[i.long()].to(x.dtype), (pos - i)[:, None]  # (N, 6, O), (N, 1)

    @staticmethod
    def _value(c: Tensor, s: Tensor) -> Tensor:
        return c[:, 0] + s * (c[:, 1] + s * (c[:, 2] + s * (c[:, 3] + s * (c[:, 4] + s * c[:, 5]))))

    def forward(self, x: Tensor) -> Tensor:
        return self._value(*self._local(x))

    def derivatives(self, x: Tensor) -> diff.Derivatives:
        c, s = self._local(x)
        u = self._value(c, s)
        du = (c[:, 1] + s * (2 * c[:, 2] + s * (3 * c[:, 3] + s * (4 * c[:, 4] + s * 5 * c[:, 5])))) / self.h
        d2u = (2 * c[:, 2] + s * (6 * c[:, 3] + s * (12 * c[:, 4] + s * 20 * c[:, 5]))) / self.h**2
        zero = torch.zeros_like(du)
        return diff.Derivatives(u, torch.stack([du, zero], 1), torch.stack([d2u, zero], 1))


class Anchored(StagedModel):
    """u = start(x) + (1 + t̂)·N(x, t), t̂ = −1 at the window's first time: the start line holds
    there exactly. ``start`` is frozen; ``net`` is a ScaledModel over the window."""

    def __init__(self, start: nn.Module, net: nn.Module) -> None:
        net.zero_ends = ((net.in_features - 1, -1),)  # type: ignore[union-attr]
        super().__init__([start.requires_grad_(False), net], [1.0, 1.0])


@dataclass(frozen=True)
class WindowResult:
    window: int
    t0: float
    t1: float
    rel_l2: float  # the window's network on the window's evaluation grid, against the exact solution
    loss: float  # its final training loss
    seconds: float
    steps: int


def _end_state(net: nn.Module, t: float) -> Callable[[Tensor], Tensor]:
    """u(·, t) of a trained window: of x (one space coordinate, as Allen–Cahn's window takes
    it) or of points (N, dim) whose time is replaced by t (any problem's window); a system's
    every field."""
    def start(x: Tensor) -> Tensor:
        at = torch.stack([x, torch.full_like(x, t)], 1) if x.ndim == 1 else torch.cat(
            [x[:, :-1], torch.full_like(x[:, -1:], t)], 1)
        with torch.no_grad():
            out = net(at)
        return out[:, 0] if out.shape[1] == 1 else out
    return start


def _edges(problem: Problem, windows: int) -> list[float]:
    """The times that split the problem's span into ``windows`` equal windows."""
    t_lo, t_hi = problem.lo[-1], problem.hi[-1]
    return [t_lo + (t_hi - t_lo) * k / windows for k in range(windows + 1)]


def train_marching(cfg: MarchingConfig, callbacks: Sequence[Callback] = (),
                   on_window: Callable[[WindowResult], None] | None = None,
                   problem: Problem | None = None) -> tuple[MarchedModel, Problem, list[WindowResult]]:
    """Train ``cfg.windows`` networks one after another; returns the marched model, the whole
    problem (its ``evaluate`` scores the marched model on the full grid) and each window's
    figures. ``problem``: the config's, when the caller has built it already."""
    if cfg.base.threads:
        torch.set_num_threads(cfg.base.threads)
    if problem is None:
        problem = make_problem(cfg.base.problem, **cfg.base.problem_kwargs)
    edges = _edges(problem, cfg.windows)
    model = MarchedModel(edges)
    known = problem.known_part().requires_grad_(False) if cfg.known_part else None  # type: ignore[attr-defined]
    results: list[WindowResult] = []
    start = None  # the window before's end state (fitted starts)
    for k in range(cfg.windows):
        t0 = time.perf_counter()
        seed = cfg.base.train.seed + k
        seed_everything(seed)
        hard = cfg.hard_initial and k > 0
        part = problem.window(edges[k], edges[k + 1], start, fitted_start=not hard)  # type: ignore[attr-defined]
        smooth = build_model(cfg.base.model, part, seed)
        if hard:
            line: nn.Module = (EndLine(model.windows[-1], edges[k]) if known is None else
                               StagedModel([EndLine(model.windows[-1], edges[k]), EndLine(known, edges[k])], [1.0, -1.0]))
            if cfg.end_line_nodes:
                line = HermiteLine.fit(line, problem.lo[0], problem.hi[0], cfg.end_line_nodes)
            smooth = Anchored(line, smooth)
        net = smooth if known is None else StagedModel([known, smooth], [1.0, 1.0])
        res = Trainer(net, part, replace(cfg.base.train, seed=seed), callbacks).fit()
        model.windows.append(net.requires_grad_(False))
        out = WindowResult(k, edges[k], edges[k + 1], res.metrics["rel_l2"], res.loss,
                           time.perf_counter() - t0, res.steps)
        results.append(out)
        if on_window is not None:
            on_window(out)
        start = _end_state(net, edges[k + 1])
    return model, problem, results


class _Relay(Callback):
    """The callbacks of a whole run, fed from window after window: steps numbered on across
    windows, each window's evaluation as ``window_rel_l2`` (it is the window's alone), the
    run's begin and end once."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks, self.offset, self.begun = list(callbacks), 0, False
        self.losses: list[float] = []
        self.nan_events = 0

    def on_train_begin(self, trainer: Any) -> None:
        if not self.begun:
            self.begun = True
            for cb in self.callbacks:
                cb.on_train_begin(trainer)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_step(self.offset + step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if "rel_l2" in metrics:
            for cb in self.callbacks:
                cb.on_eval(self.offset + step, {"window_rel_l2": metrics["rel_l2"]})

    def on_train_end(self, result: Any) -> None:  # a window's end
        self.offset += result.steps
        self.losses.extend(result.losses)
        self.nan_events += result.nan_events


def march(cfg: PINNConfig, callbacks: Sequence[Callback] = (),
          problem: Problem | None = None) -> tuple[TrainResult, MarchedModel, Problem]:
    """``run_pinn`` for ``cfg.time_windows`` > 1: the problem marched window by window (each
    starting from the window before's end, fitted), every window trained as ``cfg`` trains,
    the marched model evaluated as one on the whole problem. Callbacks see one run."""
    t0 = time.perf_counter()
    relay = _Relay(callbacks)
    model, problem, windows = train_marching(MarchingConfig(replace(cfg, time_windows=1), windows=cfg.time_windows),
                                             [relay], problem=problem)
    metrics = {**problem.evaluate(model), **{f"window_rel_l2_{w.window}": w.rel_l2 for w in windows}}
    result = TrainResult(relay.offset, windows[-1].loss, metrics, relay.nan_events, False,
                         time.perf_counter() - t0, relay.losses)
    for cb in callbacks:
        cb.on_eval(relay.offset, metrics)
        cb.on_train_end(result)
    return result, model, problem


def marched_skeleton(cfg: PINNConfig, problem: Problem) -> MarchedModel:
    """The untrained marched model of ``cfg`` (its windows' networks, as built before training:
    a trained one's weights load into it)."""
    edges = _edges(problem, cfg.time_windows)
    parts = [problem.window(a, b, start=(lambda x: x[:, 0]) if k else None)
             for k, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
    return MarchedModel(edges, [build_model(cfg.model, part, cfg.train.seed + k) for k, part in enumerate(parts)])


__all__ = ["Anchored", "EndLine", "HermiteLine", "MarchedModel", "MarchingConfig", "WindowResult", "march",
           "marched_skeleton", "train_marching"]
