"""PINN loss assembly and balancing strategies: ``fixed``, ``gradnorm``, ``lra``, ``config``.

Each strategy keeps one weight per loss term (``pde``, ``bc``, ``ic``, ``data``) and
combines the terms into the scalar the optimiser sees. The adaptive ones look at real
per-term gradients on the shared parameters every ``every`` steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

BALANCERS = ("fixed", "gradnorm", "lra", "config")


def _flat_grad(term: Tensor, params: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return torch.cat([g.reshape(-1) for g in grads if g is not None]).detach()


class Balancer:
    """Fixed weights; the base class of the adaptive strategies."""

    def __init__(self, weights: Mapping[str, float] | None = None, every: int = 10) -> None:
        self.weights: dict[str, float] = dict(weights or {})
        if every < 1:
            raise ValueError(f"balance_every: must be ≥ 1, got {every}")
        self.every = every

    def weight(self, name: str) -> float:
        return self.weights.setdefault(name, 1.0)

    def combine(self, terms: Mapping[str, Tensor]) -> Tensor:
        return sum(self.weight(k) * v for k, v in terms.items())  # type: ignore[return-value]

    def maybe_update(self, step: int, terms: Mapping[str, Tensor], params: Sequence[Tensor]) -> None:
        for k in terms:
            self.weight(k)
        if step % self.every == 0:
            self.update(terms, params)

    def update(self, terms: Mapping[str, Tensor], params: Sequence[Tensor]) -> None:
        """Fixed weights do not change."""

    def freeze(self) -> None:
        """Called when Adam ends: L-BFGS and LM minimise the sum with the weights as they are."""

    def state_dict(self) -> dict[str, object]:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.weights = dict(state["weights"])  # type: ignore[arg-type]


class LRA(Balancer):
    """Learning-rate annealing (Wang, Teng & Perdikaris 2021, Algorithm 1).

    λ̂_i = max|∇θ L_pde| / mean|∇θ L_i|;  λ_i ← (1 − α)·λ_i + α·λ̂_i.  The PDE weight is fixed
    (a system's: the largest of its equations', each times its weight).
    """

    def __init__(self, weights: Mapping[str, float] | None = None, every: int = 10,
                 alpha: float = 0.9) -> None:
        super().__init__(weights, every)
        self.alpha = alpha

    def update(self, terms: Mapping[str, Tensor], params: Sequence[Tensor]) -> None:
        pde = [n for n in terms if n == "pde" or n.startswith("pde_")]  # a system: an equation per field
        if not pde:
            return
        g_max = max(self.weight(n) * _flat_grad(terms[n], params).abs().max() for n in pde)
        for name, term in terms.items():
            if name in pde:
                continue
            g_mean = _flat_grad(term, params).abs().mean()
            if torch.isfinite(g_max) and torch.isfinite(g_mean) and g_mean > 0:
                hat = float(g_max / g_mean)
                self.weights[name] = (1 - self.alpha) * self.weight(name) + self.alpha * hat


class GradNorm(Balancer):
    """GradNorm (Chen et al. 2018) on the shared parameters.

    G_i = w_i·‖∇θ L_i‖, target_i = mean(G)·r_i^α with r_i the relative inverse training rate
    (L_i / L_i(0), normalised to mean 1). The weights take a gradient step on
    Σ|G_i − target_i| (target held constant) and are renormalised to their initial sum.
    """

    def __init__(self, weights: Mapping[str, float] | None = None, every: int = 10,
                 alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(weights, every)
        self.alpha, self.lr = alpha, lr
        self.initial: dict[str, float] = {}
        self.total: float | None = None

    def update(self, terms: Mapping[str, Tensor], params: Sequence[Tensor]) -> None:
        names = list(terms)
        norms = torch.stack([torch.linalg.vector_norm(_flat_grad(terms[k], params)) for k in names])
        values = torch.stack([terms[k].detach() for k in names]).double()
        if not (torch.isfinite(norms).all() and torch.isfinite(values).all()):
            return
        for k, v in zip(names, values.tolist()):
            self.initial.setdefault(k, max(v, 1e-30))
        if self.total is None:
            self.total = sum(self.weight(k) for k in names)
        w = torch.tensor([self.weight(k) for k in names], dtype=torch.float64)
        g = w * norms.double()
        ratio = values / torch.tensor([self.initial[k] for k in names], dtype=torch.float64)
        target = g.mean() * (ratio / ratio.mean()) ** self.alpha
        grad_w = torch.sign(g - target) * norms.double()
        w = (w - self.lr * grad_w * w.mean() / norms.double().mean().clamp_min(1e-30)).clamp_min(1e-6)
        w = w * self.total / w.sum()
        self.weights.update(dict(zip(names, w.tolist())))

    def state_dict(self) -> dict[str, object]:
        return {**super().state_dict(), "initial": dict(self.initial), "total": self.total}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        super().load_state_dict(state)
        self.initial = dict(state.get("initial", {}))  # type: ignore[arg-type]
        self.total = state.get("total")  # type: ignore[assignment]


class ConFIG(Balancer):
    """Conflict-free gradient combination (Liu, Chu & Thuerey, ICLR 2025), as per-step weights.

    With unit term gradients ĝ_i, ConFIG's direction is g_u = v/‖v‖ for the v with ĝ_iᵀv = 1
    for every i (the minimum-norm one, v = (Ĝᵀ)⁺1), scaled by Σ_i g_iᵀg_u: every term
    decreases at first order, by equal projections. The minimum-norm v lies in the span of
    the ĝ_i, v = Σ c_i ĝ_i with c = (ĜᵀĜ)⁺1, so the update is Σ_i w_i g_i with
    w_i = (Σ_j g_jᵀg_u)·c_i / (‖v‖·‖g_i‖): weights on the terms, recomputed every step, and
    the optimiser (Adam's moments included) sees exactly ConFIG's gradient. Adam only:
    L-BFGS and LM after it minimise the sum with the configured weights (:meth:`freeze`).
    """

    def __init__(self, weights: Mapping[str, float] | None = None, every: int = 10) -> None:
        super().__init__(weights, every)
        self.configured = dict(self.weights)

    def maybe_update(self, step: int, terms: Mapping[str, Tensor], params: Sequence[Tensor]) -> None:
        self.update(terms, params)  # every step: the weights are the direction

    def freeze(self) -> None:
        """A direction is not an objective (its weights may be negative): L-BFGS and LM get the
        configured loss weights back."""
        self.weights = dict(self.configured)

    def update(self, terms: Mapping[str, Tensor], params: Sequence[Tensor]) -> None:
        names = list(terms)
        G = torch.stack([_flat_grad(terms[k], params) for k in names], 1).double()  # (P, m)
        norms = G.norm(dim=0).clamp_min(1e-300)
        unit = G / norms
        c = torch.linalg.pinv(unit.T @ unit) @ torch.ones(len(names), dtype=G.dtype)
        v = unit @ c
        scale = float((G.T @ (v / v.norm().clamp_min(1e-300))).sum())
        w = scale * c / (v.norm().clamp_min(1e-300) * norms)
        self.weights.update({k: float(x) for k, x in zip(names, w)})


def make_balancer(name: str, weights: Mapping[str, float] | None = None, every: int = 10) -> Balancer:
    if name == "fixed":
        return Balancer(weights, every)
    if name == "lra":
        return LRA(weights, every)
    if name == "gradnorm":
        return GradNorm(weights, every)
    if name == "config":
        return ConFIG(weights, every)
    raise ValueError(f"balancing: unknown {name!r}; allowed: {', '.join(BALANCERS)}")
