"""Gauss–Newton for a model that is linear in its coefficients, in front of frozen ones.

Multi-stage training's spectral stage (cpikan.nn.tensor_chebyshev) adds ε·Φ(x)·c to a frozen
sum of networks. Every term's residual r is a pointwise function of the model's jets, so its
Jacobian with respect to c is the residual's sensitivity to the jets times the jets of the
basis: J = ∂r/∂jet · ε·Φ. It is taken by forward mode with the basis columns themselves as
tangents (one batch of columns at a time), so the frozen networks run once per term, not
once per coefficient, and nothing costs more than N·P per operation. Each step then solves
min ‖r + J·δ‖ by QR (:func:`solve`) on column-scaled J: no normal equations, so no squared
condition number. A linear PDE needs one step (the loss lands where the
linear model predicted, and the loop stops there); the loop re-linearises for a nonlinear one
and stops when the loss stops falling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from cpikan import diff
from cpikan.pde.base import Term

#: columns of J formed per forward-mode pass (memory: N × this per residual operation)
CHUNK = 256


class _Offset(nn.Module):
    """Stands in for the model inside a term: the i-th call returns the frozen jets recorded
    for it plus ``deltas[i]``; while ``deltas`` is None it records them (and the call's x)."""

    def __init__(self, model: nn.Module, stage: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.stage, self.scale = model, stage, scale
        self.base: list[Tensor] = []
        self.points: list[tuple[Tensor, int]] = []  # each call's x and jet order (the basis is formed per chunk)
        self.deltas: list[Tensor] | None = None
        self._calls = 0

    def _jet(self, x: Tensor, order: int) -> Tensor:
        if self.deltas is None:
            with torch.no_grad():
                d = self.model.derivatives(x) if order else None
                u = d.u if d is not None else self.model(x)
                jet = u[None] if d is None else torch.cat([u[None], d.du.permute(1, 0, 2), d.d2u.permute(1, 0, 2)])
                if jet.shape[-1] != 1:
                    raise ValueError(f"model: a linear stage fits one output, this model has {jet.shape[-1]}")
                self.base.append(jet.to(torch.float64))
                self.points.append((x, 2 if order else 0))
            return self.base[-1]
        i, self._calls = self._calls, self._calls + 1
        return self.base[i] + self.deltas[i]

    def forward(self, x: Tensor) -> Tensor:
        return self._jet(x, 0)[0]

    def derivatives(self, x: Tensor) -> diff.Derivatives:
        return diff.unpack(self._jet(x, 2))

    def replay(self, term: Term, deltas: list[Tensor]) -> Tensor:
        self.deltas, self._calls = deltas, 0
        try:
            return term.residuals(self).reshape(-1)
        finally:
            self.deltas = None


def residuals(model: nn.Module, terms: Mapping[str, Term], weights: Mapping[str, float]) -> Tensor:
    """The stacked √(w_k/N_k)·r_k: its squared norm is the trainer's loss."""
    with torch.no_grad():
        return torch.cat([math.sqrt(weights.get(k, 1.0) / max(len(t), 1)) * t.residuals(model).reshape(-1).double()
                          for k, t in terms.items()])


def linearise(model: nn.Module, stage: nn.Module, scale: float, term: Term,
              out: np.ndarray | None = None, weight: float = 1.0) -> tuple[Tensor, np.ndarray]:
    """(r, J) of one term at the current coefficients: r (N,), J (N, P) = ∂r/∂c, both times
    ``weight``. J is written into ``out`` (column-major N × P, e.g. rows of a larger system)
    when given; the basis is formed one chunk of columns at a time, so memory stays at J."""
    off = _Offset(model, stage, scale)
    r = term.residuals(off).reshape(-1).to(torch.float64) * weight
    zeros = [torch.zeros_like(b) for b in off.base]
    p = stage.n_features
    if out is None:
        out = np.empty((len(r), p), order="F")

    def column(*t: Tensor) -> Tensor:
        return jvp(lambda *dl: off.replay(term, list(dl)), tuple(zeros), t)[1]

    for lo in range(0, p, CHUNK):
        cols = slice(lo, min(lo + CHUNK, p))
        # the basis as jets of the model's output, one tangent per column: (chunk, 1 + 2D, N, 1)
        tangents = [(scale * stage.features(x, order, cols)).movedim(-1, 0)[..., None] for x, order in off.points]
        out[:, cols] = (weight * vmap(column)(*tangents)).T.double().numpy()
    return r, out


def solve(a: np.ndarray, b: np.ndarray, rcond: float) -> np.ndarray:
    """min ‖a·x − b‖ by Householder QR (blocked, ~3× faster than pivoted QR here); where R's
    diagonal shows a rank below full, by QR with column pivoting (gelsy), which drops the
    dependent columns instead of amplifying them."""
    qtb, r = scipy.linalg.qr_multiply(a, b[None, :], mode="right")
    diag = np.abs(np.diag(r))
    if diag.min() > rcond * diag.max():
        return scipy.linalg.solve_triangular(r, qtb[0], check_finite=False)
    x, *_ = scipy.linalg.lstsq(a, b, lapack_driver="gelsy", cond=rcond, check_finite=False)
    return x


def fit_linear(model: nn.Module, stage: nn.Module, scale: float, terms: Mapping[str, Term],
               weights: Mapping[str, float], *, steps: int = 3, rcond: float = 1e-14,
               min_gain: float = 1.01) -> list[float]:
    """Gauss–Newton on ``stage.coef`` (``model`` holds ``scale·stage`` and frozen parts).

    Minimises Σ_k w_k·mean(r_k²) (the trainer's loss); returns the loss before each step and
    after the last. Stops after ``steps`` or when a step lowers the loss by less than
    ``min_gain``× (a step that raises it is undone).
    """
    coef = stage.coef
    rows = np.cumsum([0] + [len(t) for t in terms.values()])

    def jacobian() -> np.ndarray:
        jac = np.empty((int(rows[-1]), stage.n_features), order="F")
        for (k, term), a, b in zip(terms.items(), rows[:-1], rows[1:]):
            linearise(model, stage, scale, term, jac[a:b], math.sqrt(weights.get(k, 1.0) / max(len(term), 1)))
        return jac

    r = residuals(model, terms, weights).numpy()
    losses = [float(np.square(r).sum())]
    for _ in range(steps):
        jac = jacobian()
        norm = np.linalg.norm(jac, axis=0)
        norm[norm == 0] = 1.0
        jac /= norm
        step = solve(jac, -r, rcond)
        predicted = float(np.square(r + jac @ step).sum())
        del jac
        step /= norm
        old = coef.detach().clone()
        with torch.no_grad():
            coef.add_(torch.from_numpy(step).to(coef))
        r = residuals(model, terms, weights).numpy()
        loss = float(np.square(r).sum())
        if not loss < losses[-1]:
            with torch.no_grad():
                coef.copy_(old)
            break
        losses.append(loss)
        # the linear model held (a linear PDE): a second step would land on the same minimum
        linear = abs(loss - predicted) <= 1e-6 * losses[-2]
        if linear or loss * min_gain > losses[-2]:
            break
    return losses


__all__ = ["fit_linear", "linearise", "residuals", "solve"]
