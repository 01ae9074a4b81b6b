"""Levenberg–Marquardt for small PINNs: the loss is a sum of squares, so use its Jacobian.

Adam and L-BFGS see only the gradient of the loss Σ_k w_k·mean(r_k²). Levenberg–Marquardt
sees the residuals themselves: with r the stacked vector of √(w_k/N_k)·r_k (so ‖r‖² is that
same loss) and J = ∂r/∂θ, each step solves

    (JᵀJ + μ·diag(JᵀJ)) δ = −Jᵀr,

a Gauss–Newton step that bends toward scaled gradient descent when the quadratic model is
poor (μ grows on rejected steps and shrinks on good ones, Nielsen's rule). Every residual
is pointwise (:class:`cpikan.pde.Term`), so J is a batch of per-point gradients: one
``torch.func.vmap(grad)`` pass, about the cost of a few training steps for a network of a
few hundred parameters. The P×P solve is cheap at that size; the cost grows as N·P², so
the phase is meant for models up to a few thousand parameters (``MAX_PARAMETERS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from cpikan.pde.base import Term

#: J and JᵀJ are dense: beyond this many parameters use L-BFGS
MAX_PARAMETERS = 20_000
#: cholesky: the normal equations (fast; JᵀJ squares J's condition number: at cond(J) = 1e12
#: they stop at 1e-10 relative residual where the SVD reaches 1e-16, tests/test_lm.py);
#: svd: one SVD of the scaled J per step, every damping tried from it (multi-stage training)
SOLVERS = ("cholesky", "svd")


class _Joint(nn.Module):
    """Model and problem under one roof: one ``functional_call`` swaps both parameter sets
    (the inverse problem's coefficients live on the problem)."""

    def __init__(self, model: nn.Module, problem: nn.Module) -> None:
        super().__init__()
        self.model, self.problem = model, problem

    def forward(self, fn: Callable[..., Tensor], *rows: Tensor) -> Tensor:
        return fn(self.model, *rows)


class ResidualJacobian:
    """Stacked weighted residuals r and their Jacobian J with respect to the trainable
    parameters of ``model`` and ``problem``, in the order of ``params``."""

    def __init__(self, model: nn.Module, problem: nn.Module, params: Iterable[Tensor],
                 chunk_size: int = 4096) -> None:
        self.joint = _Joint(model, problem)
        name_of = {id(p): n for n, p in self.joint.named_parameters()}
        params = list(params)
        if any(id(p) not in name_of for p in params):
            raise ValueError("lm: every trained parameter must belong to the model or the problem")
        self.names = [name_of[id(p)] for p in params]  # J's columns follow ``params``
        self.chunk_size = chunk_size

    @staticmethod
    def scales(terms: Mapping[str, Term], weights: Mapping[str, float]) -> dict[str, float]:
        return {k: math.sqrt(weights[k] / len(t)) for k, t in terms.items()}

    def term_losses(self, terms: Mapping[str, Term]) -> dict[str, float]:
        """Each term's mean squared residual at the current parameters (no graph)."""
        with torch.no_grad():
            return {k: float(t.residuals(self.joint.model).square().mean()) for k, t in terms.items()}

    def __call__(self, terms: Mapping[str, Term], weights: Mapping[str, float]) -> tuple[Tensor, Tensor]:
        params = {n: p.detach() for n, p in self.joint.named_parameters() if n in self.names}
        scales = self.scales(terms, weights)
        rows, blocks = [], []
        for k, t in terms.items():
            def one(p: dict[str, Tensor], *row: Tensor, fn: Callable[..., Tensor] = t.fn) -> Tensor:
                return functional_call(self.joint, p, (fn, *(r[None] for r in row)))[0]

            in_dims = (None, *(0,) * len(t.inputs))
            g, r = vmap(grad_and_value(one), in_dims=in_dims, chunk_size=self.chunk_size)(params, *t.inputs)
            s = scales[k]
            rows.append(s * r.detach())
            blocks.append(s * torch.cat([g[n].reshape(len(t), -1) for n in self.names], dim=1))
        return torch.cat(rows), torch.cat(blocks)


def add_flat(params: list[Tensor], base: list[Tensor], delta: Tensor) -> None:
    """params ← base + delta, with delta one flat vector in the order of ``params``."""
    i = 0
    for p, b in zip(params, base):
        n = p.numel()
        torch.add(b, delta[i : i + n].view_as(p), out=p)
        i += n


def nielsen(mu: float, loss: float, new: float, predicted: float) -> float:
    """The damping after an accepted step (Nielsen's rule): the better the quadratic model
    predicted the fall (ρ = actual / predicted → 1), the less damping next time."""
    rho = (loss - new) / max(predicted, 1e-300)
    return mu * max(1.0 / 3.0, 1.0 - (2.0 * min(rho, 1.0) - 1.0) ** 3)


class LMStep(NamedTuple):
    loss: float  # after the step (before it, when no step was taken)
    grad_norm: float  # ‖∇loss‖ = ‖2Jᵀr‖ before the step
    moved: bool  # False: no damping made the loss fall (converged, or a non-finite point)


class LevenbergMarquardt(torch.optim.Optimizer):
    """Levenberg–Marquardt with Marquardt's diagonal scaling and Nielsen's damping update.

    ``step(linearize, loss_now)``: ``linearize()`` returns (r, J) at the current parameters,
    ``loss_now()`` the loss ‖r‖² there; the step tries δ in place and keeps it only if the
    loss falls, so an accepted step never increases the loss. The damping μ (and Nielsen's
    ν) live in ``param_groups``: they checkpoint with ``state_dict``.
    """

    def __init__(self, params: Iterable[Tensor], damping: float = 1e-3, max_tries: int = 30,
                 solver: str = "cholesky") -> None:
        if not damping > 0:
            raise ValueError(f"lm_damping: must be > 0, got {damping}")
        if solver not in SOLVERS:
            raise ValueError(f"lm_solver: unknown {solver!r}; allowed: {', '.join(SOLVERS)}")
        super().__init__(params, {"damping": float(damping), "nu": 2.0})
        self.max_tries = max_tries
        self.solver = solver

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _set(self, base: list[Tensor], delta: Tensor) -> None:
        add_flat(self._params(), base, delta)

    @torch.no_grad()
    def step(self, linearize: Callable[[], tuple[Tensor, Tensor]],  # type: ignore[override]
             loss_now: Callable[[], float]) -> LMStep:
        r, J = linearize()
        loss, g = float(r.square().sum()), J.T @ r

        def solver() -> Callable[[float], Tensor | None]:
            diag = self._floor(J.square().sum(0))
            return self._svd_solver(J, r, diag) if self.solver == "svd" else self._cholesky_solver(J.T @ J, g, diag)

        def predict(d: Tensor) -> float:
            jd = J @ d
            return float(-(2.0 * r @ jd + jd @ jd))
        return self._damped(loss, g, solver, predict, loss_now)

    @torch.no_grad()
    def step_normal(self, normal: Callable[[], tuple[float, Tensor, Tensor]], loss_now: Callable[[], float]) -> LMStep:
        """The same step from the normal equations: ``normal()`` returns (‖r‖², Jᵀr, JᵀJ).
        For systems whose JᵀJ is assembled block by block (coupled patches) and J itself
        would not fit in memory; Cholesky only."""
        loss, g, A = normal()
        return self._damped(loss, g, lambda: self._cholesky_solver(A, g, self._floor(A.diagonal().clone())),
                            lambda d: float(-(2.0 * g @ d + d @ (A @ d))), loss_now)

    @staticmethod
    def _floor(diag: Tensor) -> Tensor:
        return diag.clamp_min(1e-12 * float(diag.max()) + 1e-300)

    def _damped(self, loss: float, g: Tensor, solver: Callable[[], Callable[[float], Tensor | None]],
                predict: Callable[[Tensor], float], loss_now: Callable[[], float]) -> LMStep:
        """Try δ(μ) = solver()(μ) with growing μ until the loss falls; ``predict(δ)`` is the
        quadratic model's fall, for Nielsen's damping update."""
        group = self.param_groups[0]
        grad_norm = 2.0 * float(torch.linalg.vector_norm(g))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return LMStep(loss, grad_norm, False)
        mu, nu = group["damping"], group["nu"]
        base = [p.detach().clone() for p in self._params()]
        solve = solver()
        for _ in range(self.max_tries):
            delta = solve(mu)
            if delta is not None:
                predicted = predict(delta)
                self._set(base, delta)
                new = loss_now()
                if math.isfinite(new) and new < loss:
                    group["damping"] = nielsen(mu, loss, new, predicted)
                    group["nu"] = 2.0
                    return LMStep(new, grad_norm, True)
                for p, b in zip(self._params(), base):
                    p.copy_(b)
            mu, nu = mu * nu, nu * 2.0
        group["damping"], group["nu"] = min(mu, 1e30), 2.0
        return LMStep(loss, grad_norm, False)

    @staticmethod
    def _cholesky_solver(A: Tensor, g: Tensor, diag: Tensor) -> Callable[[float], Tensor | None]:
        def solve(mu: float) -> Tensor | None:
            chol, info = torch.linalg.cholesky_ex(A + torch.diag(mu * diag))
            return None if int(info) else -torch.cholesky_solve(g[:, None], chol)[:, 0]
        return solve

    @staticmethod
    def _svd_solver(J: Tensor, r: Tensor, diag: Tensor) -> Callable[[float], Tensor | None]:
        """(JᵀJ + μD)δ = −Jᵀr through J·D^{-1/2} = U S Vᵀ: δ = −D^{-1/2} V (S/(S² + μ)) Uᵀr."""
        root = diag.sqrt()
        U, S, Vh = torch.linalg.svd(J / root, full_matrices=False)
        ur = U.T @ r

        def solve(mu: float) -> Tensor | None:
            return -(Vh.T @ (S / (S * S + mu) * ur)) / root
        return solve


__all__ = ["MAX_PARAMETERS", "SOLVERS", "LMStep", "LevenbergMarquardt", "ResidualJacobian", "add_flat", "nielsen"]
