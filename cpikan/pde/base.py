"""The Problem protocol every PDE benchmark follows.

A problem owns its domain, its collocation sampler, its residual (written with derivatives
from the fast jet path), its boundary/initial/data terms, the reference solution and a
fixed evaluation grid. It is an ``nn.Module`` so that unknown coefficients (the inverse
problem) are ordinary parameters that train and checkpoint with the model.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from cpikan import sampling
from cpikan.diff import Derivatives
from cpikan.nn.base import check_bounds
from cpikan.pde.reference import load_reference

DerivFn = Callable[[nn.Module, Tensor], Derivatives]


@dataclass
class Term:
    """One loss term as pointwise residuals: ``fn(model, *inputs)`` gives one residual per
    row of ``inputs``, and row n depends on row n alone.

    The loss is their mean square. Pointwise is what lets the Levenberg–Marquardt phase take
    the Jacobian one point at a time (``cpikan.train.lm``).
    """

    fn: Callable[..., Tensor]
    inputs: tuple[Tensor, ...]

    def residuals(self, model: nn.Module) -> Tensor:
        return self.fn(model, *self.inputs)

    def __len__(self) -> int:
        return len(self.inputs[0])


def misfit(model: nn.Module, points: Tensor, values: Tensor, out: int = 0) -> Tensor:
    """u(points) − values: the residual of a Dirichlet, initial or data condition (on the
    network's output ``out``: a system's field)."""
    pred = model(points)[:, out]
    return pred - values.to(pred.dtype)


def like(outputs: Tensor, values: Tensor) -> Tensor:
    """The network's (N, outputs) as ``values`` hold them: (N,) the first, (N, O) the first O."""
    return outputs[:, 0] if values.ndim == 1 else outputs[:, : values.shape[1]]


@dataclass
class Collocation:
    """Training points: interior, and (points, target values) for each condition."""

    interior: Tensor
    conditions: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    #: each interior point's volume share (mean 1; VW-PINNs), or None: all equal
    weight: Tensor | None = None

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Collocation:
        return Collocation(
            self.interior.to(device, dtype),
            {k: (p.to(device, dtype), v.to(device, dtype)) for k, (p, v) in self.conditions.items()},
            None if self.weight is None else self.weight.to(device, dtype),
        )

    def state(self) -> dict[str, Tensor]:
        out = {"interior": self.interior}
        if self.weight is not None:
            out["weight"] = self.weight
        for k, (p, v) in self.conditions.items():
            out[f"{k}.points"], out[f"{k}.values"] = p, v
        return out

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> Collocation:
        names = sorted({k.split(".")[0] for k in state if k not in ("interior", "weight")})
        return cls(state["interior"], {n: (state[f"{n}.points"], state[f"{n}.values"]) for n in names},
                   state.get("weight"))

    def split(self, parts: int) -> list[Collocation]:
        """``parts`` micro-batches (gradient accumulation); every term is split alike."""
        weights = [None] * parts if self.weight is None else list(self.weight.chunk(parts))
        out = [Collocation(chunk, {}, w) for chunk, w in zip(self.interior.chunk(parts), weights)]
        for k, (p, v) in self.conditions.items():
            for mb, pp, vv in zip(out, p.chunk(parts), v.chunk(parts)):
                mb.conditions[k] = (pp, vv)
        return out


class Problem(nn.Module):
    """Base class: subclasses set ``name``, ``lo``, ``hi``, ``coords`` and implement
    :meth:`exact` and :meth:`residual`; time, when present, is the last coordinate."""

    name: str = ""
    coords: tuple[str, ...] = ()
    time_dependent: bool = False
    #: the residual is divided by this so the PDE term is O(1) (the equation's own scale)
    residual_scale: float = 1.0
    #: coordinates whose both faces carry u = 0 (a model may impose them exactly: hard_bc)
    zero_faces: tuple[int, ...] = ()
    #: the network's outputs: a system's fields (u, v, …), read as d.u[:, k] and d.dx(j, k).
    #: With several, exact(x) gives (N, outputs) and residual(d, x) one equation per field,
    #: (N, outputs); each equation and each field's condition is a loss term of its own
    #: (pde_0, bc_1, …: one residual per point, as Levenberg–Marquardt takes them)
    outputs: int = 1
    #: constructor arguments that choose how the problem is solved, not what it is (a
    #: benchmark may vary these and stay itself; any other argument makes another problem)
    method_kwargs: tuple[str, ...] = ("n_interior", "n_boundary", "n_initial", "sampler")

    def __init__(
        self,
        lo: tuple[float, ...],
        hi: tuple[float, ...],
        *,
        n_interior: int = 2000,
        n_boundary: int = 400,
        n_initial: int = 400,
        sampler: str = "lhs",
        eval_resolution: int = 101,
        reference: str | None = None,
    ) -> None:
        super().__init__()
        self.lo, self.hi = (tuple(v) for v in check_bounds(lo, hi))
        if sampler not in sampling.SAMPLERS:
            raise ValueError(f"sampler: unknown {sampler!r}; allowed: {', '.join(sampling.SAMPLERS)}")
        for f, v in (("n_interior", n_interior), ("n_boundary", n_boundary), ("n_initial", n_initial)):
            if v < 0 or (f == "n_interior" and v < 1):
                raise ValueError(f"{f}: must be a positive count, got {v}")
        self.n_interior, self.n_boundary, self.n_initial = n_interior, n_boundary, n_initial
        self.sampler = sampler
        self.eval_resolution = eval_resolution
        #: a reference solver's solution to measure against instead of exact(x) (cpikan.pde.reference)
        self.reference_file = None if reference is None else str(Path(reference).resolve())
        self._reference = None if reference is None else load_reference(
            reference, self.coords, self.lo, self.hi, self.outputs, masked=self.has_region())

    @property
    def dim(self) -> int:
        return len(self.lo)

    # -- to implement --------------------------------------------------------------
    def exact(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.name or type(self).__name__} defines no exact(x)")

    def residual(self, d: Derivatives, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- sampling ------------------------------------------------------------------
    def inside(self, x: Tensor) -> Tensor:
        """Which points of the box lie in the domain, (N,) bool: a problem on a disk or an
        L-shape says so here, and its interior and initial points and its evaluation grid keep
        those inside (its boundary is :meth:`sample_boundary`'s to give). The box by default."""
        return torch.ones(len(x), dtype=torch.bool)

    def has_region(self) -> bool:
        """Whether the domain is less than the box (:meth:`inside` is the problem's own)."""
        return type(self).inside is not Problem.inside

    def _in_region(self, draw: Callable[[int], Tensor], n: int) -> Tensor:
        """n points of ``draw(m)`` (m points in the box) that lie inside the domain."""
        if not self.has_region():
            return draw(n)
        kept, found, drawn = [], 0, 0
        while found < n:
            if drawn >= 1000 * n:  # a domain that small is a mistake in inside(x), or far better sampled directly
                raise ValueError(f"inside: {found} of {drawn} points drawn in the box lie inside the domain; "
                                 "check inside(x), or sample the domain yourself (sample_interior)")
            pts = draw(max(2 * (n - found), 64))
            drawn += len(pts)
            pts = pts[self.inside(pts).to(torch.bool)]
            kept.append(pts)
            found += len(pts)
        return torch.cat(kept)[:n]

    def sample_interior(self, n: int, gen: torch.Generator) -> Tensor:
        return self._in_region(lambda m: sampling.sample(self.sampler, m, self.lo, self.hi, gen), n)

    def sample_boundary(self, n: int, gen: torch.Generator) -> Tensor:
        """Points on the spatial faces of the box (every face equally often)."""
        space = self.dim - 1 if self.time_dependent else self.dim
        along = "chebyshev" if self.sampler == "chebyshev" else "uniform"  # lhs strata: interior only
        pts = sampling.sample(along, n, self.lo, self.hi, gen)
        face = torch.arange(n) % (2 * space)
        dim, side = face // 2, face % 2
        lo, hi = torch.tensor(self.lo, dtype=pts.dtype), torch.tensor(self.hi, dtype=pts.dtype)
        value = torch.where(side == 0, lo[dim], hi[dim])
        return pts.scatter(1, dim[:, None], value[:, None])

    def sample_initial(self, n: int, gen: torch.Generator) -> Tensor:
        def draw(m: int) -> Tensor:
            pts = sampling.sample(self.sampler, m, self.lo, self.hi, gen)
            return torch.cat([pts[:, :-1], torch.full_like(pts[:, -1:], self.lo[-1])], dim=1)

        return self._in_region(draw, n)

    def sample(self, gen: torch.Generator) -> Collocation:
        interior = self.sample_interior(self.n_interior, gen)
        cond = {}
        if self.n_boundary:
            b = self.sample_boundary(self.n_boundary, gen)
            cond["bc"] = (b, self.boundary_values(b))
        if self.time_dependent and self.n_initial:
            i = self.sample_initial(self.n_initial, gen)
            cond["ic"] = (i, self.initial_values(i))
        cond.update(self.data())
        return Collocation(interior, cond)

    def boundary_values(self, x: Tensor) -> Tensor:
        """u at boundary points (the Dirichlet data): ``exact(x)`` unless a problem with no
        closed form (measured against a ``reference``) says what it is."""
        return self._known("boundary_values", x)

    def initial_values(self, x: Tensor) -> Tensor:
        """u at t = lo[-1] (the initial condition): ``exact(x)`` unless the problem says."""
        return self._known("initial_values", x)

    def _known(self, hook: str, x: Tensor) -> Tensor:
        if type(self).exact is Problem.exact:
            raise NotImplementedError(f"{self.name or type(self).__name__} defines neither exact(x) nor {hook}(x), "
                                      f"which gives the condition's values")
        return self.exact(x)

    def window(self, t0: float, t1: float, start: Callable[[Tensor], Tensor] | None = None,
               fitted_start: bool = True) -> Problem:
        """The same problem on [t0, t1] of its time (time marching, ``cpikan.marching``): its
        initial values at t0 are ``start(points)`` (the window before's end), the problem's own
        at its first time; its reference and observations, if any, cut to the window. The copy shares the
        problem's parameters (an inverse problem's unknowns train on, window after window)."""
        if not self.time_dependent:
            raise ValueError(f"time_windows: {self.name or type(self).__name__} is not time-dependent")
        if not self.lo[-1] <= t0 < t1 <= self.hi[-1]:
            raise ValueError(f"window: need {self.lo[-1]} ≤ t0 < t1 ≤ {self.hi[-1]}, got [{t0}, {t1}]")
        if start is None and t0 != self.lo[-1]:
            raise ValueError(f"window: a window from t0 = {t0} after the first time needs the state at t0 (start)")
        out = copy.copy(self)
        out.lo, out.hi = (*self.lo[:-1], t0), (*self.hi[:-1], t1)
        out.n_initial = self.n_initial if fitted_start else 0
        if start is not None:
            out.initial_values = start  # type: ignore[method-assign]
        if self._reference is not None:
            pts, values = self._reference
            keep = (pts[:, -1] >= t0) & (pts[:, -1] <= t1)
            out._reference = (pts[keep], values[keep])
        observed = self.data

        def data() -> dict[str, tuple[Tensor, Tensor]]:  # observations: those made in the window
            return {k: (p[(p[:, -1] >= t0) & (p[:, -1] <= t1)], v[(p[:, -1] >= t0) & (p[:, -1] <= t1)])
                    for k, (p, v) in observed().items()}

        out.data = data  # type: ignore[method-assign]
        return out

    def data(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Observed samples (inverse problems); none by default."""
        return {}

    # -- losses and evaluation -----------------------------------------------------
    def terms(self, batch: Collocation, deriv_fn: DerivFn | None = None) -> dict[str, Term]:
        """The PDE residual (divided by ``residual_scale``) and each condition's misfit."""
        x = sampling.check_finite("interior", batch.interior)

        def pde(model: nn.Module, x: Tensor, eq: int = -1) -> Tensor:
            d = model.derivatives(x) if deriv_fn is None else deriv_fn(model, x)
            r = self.residual(d, x.to(d.u.dtype)) / self.residual_scale
            if eq >= 0 and r.shape != (len(x), self.outputs):
                raise ValueError(f"residual: gives shape {tuple(r.shape)}; a system of {self.outputs} fields gives "
                                 f"one equation per field, ({len(x)}, {self.outputs})")
            return r if eq < 0 else r[:, eq]

        def weighted(model: nn.Module, x: Tensor, root: Tensor, eq: int = -1) -> Tensor:
            return pde(model, x, eq) * root.to(x.dtype)  # VW-PINNs: r_i·√w_i, the mean square weighs volumes

        terms = {}
        for eq in [-1] if self.outputs == 1 else range(self.outputs):
            name = "pde" if eq < 0 else f"pde_{eq}"
            terms[name] = (Term(functools.partial(pde, eq=eq), (x,)) if batch.weight is None
                           else Term(functools.partial(weighted, eq=eq), (x, batch.weight.sqrt())))
        for name, (pts, vals) in batch.conditions.items():
            if vals.ndim == 1:
                terms[name] = Term(misfit, (pts, vals))
            else:  # a condition on every field of a system: one term per field
                terms.update({f"{name}_{k}": Term(functools.partial(misfit, out=k), (pts, vals[:, k]))
                              for k in range(vals.shape[1])})
        return terms

    def loss_terms(
        self, model: nn.Module, batch: Collocation, deriv_fn: DerivFn | None = None
    ) -> dict[str, Tensor]:
        """Mean squared PDE residual and condition misfits, one entry per term."""
        return {k: t.residuals(model).square().mean() for k, t in self.terms(batch, deriv_fn).items()}

    def eval_grid(self) -> Tensor:
        axes = [torch.linspace(a, b, self.eval_resolution, dtype=torch.float64)
                for a, b in zip(self.lo, self.hi)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)
        return grid[self.inside(grid).to(torch.bool)] if self.has_region() else grid  # measured where it lives

    def reference_solution(self) -> tuple[Tensor, Tensor]:
        """The points a run is measured at and the solution there: the ``reference`` file's,
        or ``exact`` on the evaluation grid."""
        if self._reference is not None:
            pts, values = self._reference
            known = values.reshape(len(values), -1).isfinite().all(1)  # a region's grid: NaN outside it
            return (pts, values) if bool(known.all()) else (pts[known], values[known])
        grid = self.eval_grid()
        return grid, self.exact(grid)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        grid, ref = self.reference_solution()
        pred = torch.cat([like(model(c), ref).double() for c in grid.split(65536)])
        rel = torch.linalg.vector_norm(pred - ref) / torch.linalg.vector_norm(ref)
        fields = {}
        if ref.ndim == 2:  # a system: each field's error too
            fields = {f"rel_l2_{k}": float(torch.linalg.vector_norm(pred[:, k] - ref[:, k])
                                           / torch.linalg.vector_norm(ref[:, k])) for k in range(ref.shape[1])}
        return {"rel_l2": float(rel), **fields, **self.learned()}

    @torch.no_grad()
    def error_over_time(self, model: nn.Module, bins: int = 100) -> tuple[Tensor, Tensor]:
        """(times, the relative L2 error at each) of a time-dependent problem, at the points
        it is measured at: each time of a grid, or ``bins`` equal spans of scattered points'
        times. Where the error grows (a shock forming, a late front) shows here, not in rel_l2."""
        if not self.time_dependent:
            raise ValueError(f"{self.name or type(self).__name__} is not time-dependent")
        pts, ref = self.reference_solution()
        pred = torch.cat([like(model(c), ref).double() for c in pts.split(65536)])
        t = pts[:, -1]
        times, slot = torch.unique(t, return_inverse=True)
        if len(times) > bins:  # scattered: spans
            edges = torch.linspace(float(t.min()), float(t.max()), bins + 1, dtype=t.dtype)
            slot = torch.bucketize(t, edges[1:-1], right=True)  # [t_k, t_k+1): the last span closed
            times = (edges[:-1] + edges[1:]) / 2
        sq = lambda v: v.square().reshape(len(v), -1).sum(1)  # noqa: E731 — over a system's fields too
        err = torch.zeros(len(times), dtype=torch.float64).index_add_(0, slot, sq(pred - ref))
        norm = torch.zeros(len(times), dtype=torch.float64).index_add_(0, slot, sq(ref))
        keep = norm > 0  # a span without points, or where the solution is zero: no relative error
        return times[keep], (err[keep] / norm[keep]).sqrt()

    def learned(self) -> dict[str, float]:
        """The problem's own trained parameters (an inverse problem's unknown coefficients) by
        name, ``problem.k`` (``problem.w.0``, … for a small vector: MLflow's names allow no
        brackets): what an inverse run is for, recorded with its error."""
        out = {}
        for name, p in self.named_parameters():
            if p.numel() == 1:
                out[f"problem.{name}"] = float(p.detach())
            elif p.numel() <= 8:
                out.update({f"problem.{name}.{i}": float(v) for i, v in enumerate(p.detach().flatten())})
        return out

    def settings(self) -> dict[str, object]:
        return {"problem": self.name, "lo": list(self.lo), "hi": list(self.hi),
                "n_interior": self.n_interior, "n_boundary": self.n_boundary,
                "n_initial": self.n_initial if self.time_dependent else 0, "sampler": self.sampler}

