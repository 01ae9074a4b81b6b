"""The Levenberg–Marquardt phase: its Jacobian, its steps, its place in the trainer."""

import math

import pytest
import torch

from cpikan.experiment import ModelConfig, PINNConfig, build, run_pinn
from cpikan.train import Callback, History, Trainer
from cpikan.train.lm import LevenbergMarquardt, ResidualJacobian
from tests.helpers import tiny_config


def _autograd_jacobian(problem, model, batch, weights, params):
    """Row by row with torch.autograd.grad: the plain reference for the per-point path."""
    rows, grads = [], []
    for name, term in problem.terms(batch).items():
        r = math.sqrt(weights[name] / len(term)) * term.residuals(model)
        for i in range(len(r)):
            g = torch.autograd.grad(r[i], params, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                                    for gi, p in zip(g, params)]))
        rows.append(r.detach())
    return torch.cat(rows), torch.stack(grads)


@pytest.mark.parametrize("problem_name", ["diffusion", "helmholtz1d", "reaction_diffusion_inverse"])
def test_jacobian_equals_autograd_of_the_stacked_residuals(problem_name):
    """Per-point gradients (vmap) == row-by-row autograd; ‖r‖² == the trainer's loss."""
    cfg = tiny_config(problem_name, adam_steps=0)
    problem, model = build(cfg)
    batch = problem.sample(torch.Generator().manual_seed(0)).to(torch.float64)
    params = [p for p in [*model.parameters(), *problem.parameters()] if p.requires_grad]
    rj = ResidualJacobian(model, problem, params)
    terms = problem.terms(batch)
    weights = {k: w for k, w in zip(terms, (0.5, 2.0, 1.0, 3.0))}
    r, J = rj(terms, weights)
    r_ref, J_ref = _autograd_jacobian(problem, model, batch, weights, params)
    assert J.shape == (sum(len(t) for t in terms.values()), sum(p.numel() for p in params))
    assert torch.allclose(r, r_ref, rtol=1e-12, atol=1e-14)
    assert torch.allclose(J, J_ref, rtol=1e-10, atol=1e-12)
    loss = sum(weights[k] * v for k, v in problem.loss_terms(model, batch).items())
    assert float(r.square().sum()) == pytest.approx(float(loss.detach()), rel=1e-12)
    if problem_name == "reaction_diffusion_inverse":
        assert {"problem.log_D", "problem.log_kappa"} <= set(rj.names)
        assert J[:, -2:].abs().sum() > 0  # the coefficients move the PDE residual


def test_lm_steps_never_raise_the_loss_and_beat_lbfgs():
    """Each accepted step lowers the loss; on the same budget from the same Adam start LM
    ends far below L-BFGS (the reason the phase exists)."""
    base = dict(adam_steps=50, lr=1e-2, loss_weights={"pde": 0.01, "ic": 1.0, "bc": 1.0})
    hist = History()
    lm, _, _ = run_pinn(tiny_config(lm_steps=40, **base), [hist])
    lbfgs, _, _ = run_pinn(tiny_config(lbfgs_steps=40, **base))
    losses = [m["loss"] for s, m in hist.steps if s > 50]
    assert len(losses) == 40
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert {"damping", "loss_pde", "loss_ic", "loss_bc"} <= set(hist.steps[-1][1])
    assert "lr" not in hist.steps[-1][1]
    print(lm.loss, lbfgs.loss)
    assert lm.loss < 0.1 * lbfgs.loss, (lm.loss, lbfgs.loss)


def test_lm_rejects_a_bad_step_and_raises_the_damping():
    """A step that would raise the loss is undone exactly (parameters bit-identical)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = LevenbergMarquardt([w], damping=1e-6)
    before = w.detach().clone()
    r0 = torch.tensor([1.0], dtype=torch.float64)
    J = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    out = opt.step(lambda: (r0, J), lambda: math.inf)  # every trial "worse"
    assert not out.moved and torch.equal(w.detach(), before)
    assert opt.param_groups[0]["damping"] > 1e3


def test_nan_in_lm_phase_is_survived():
    class Poison(Callback):
        def on_step(self, step, metrics):
            if step == 25:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    cfg = tiny_config(adam_steps=20, lr=1e-2, lm_steps=15, lm_damping=1e-3)
    problem, model = build(cfg)
    trainer = Trainer(model, problem, cfg.train, [Poison()])
    result = trainer.fit()
    assert result.nan_events == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(result.loss)
    assert trainer.opt.param_groups[0]["damping"] > 0


def test_lm_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="lm_damping: must be > 0"):
        tiny_config(lm_steps=5, lm_damping=0.0)
    with pytest.raises(ValueError, match="lm_steps: must be ≥ 0"):
        tiny_config(lm_steps=-1)
    big = PINNConfig("diffusion", {}, ModelConfig(hidden=(64, 64), degree=5, dtype="float64"),
                     tiny_config(lm_steps=5).train)
    problem, model = build(big)
    with pytest.raises(ValueError, match=r"lm_steps: .*dense .* allowed up to 20000 parameters"):
        Trainer(model, problem, big.train)


def test_the_svd_solver_keeps_the_precision_the_normal_equations_lose():
    """Least squares with cond(J) = 1e12: JᵀJ (cond 1e24) stops the Cholesky path near 1e-10
    relative residual (measured 1.4e-10); the SVD path reaches rounding (1.3e-16). Both agree
    on a well-conditioned J."""
    def fit(cond: float, solver: str) -> float:
        gen = torch.Generator().manual_seed(0)
        n, p = 60, 8
        U, _ = torch.linalg.qr(torch.randn(n, p, generator=gen, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
        A = U @ torch.diag(torch.logspace(0, -math.log10(cond), p, dtype=torch.float64)) @ V.T
        b = A @ torch.randn(p, dtype=torch.float64, generator=gen)
        w = torch.zeros(p, dtype=torch.float64, requires_grad=True)
        opt = LevenbergMarquardt([w], damping=1e-3, solver=solver)
        for _ in range(60):
            opt.step(lambda: ((A @ w - b).detach(), A), lambda: float((A @ w - b).square().sum()))
        return float((A @ w.detach() - b).norm() / b.norm())

    assert fit(1e3, "svd") < 1e-14 and fit(1e3, "cholesky") < 1e-14
    assert fit(1e12, "cholesky") > 1e-12 and fit(1e12, "svd") < 1e-14
    with pytest.raises(ValueError, match="lm_solver: unknown 'qr'"):
        LevenbergMarquardt([torch.zeros(1, requires_grad=True)], solver="qr")


def test_the_normal_equations_step_matches_the_jacobian_step():
    """step_normal (JᵀJ assembled by the caller, coupled patches) takes the step step does."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.sin(X.sum(1))
    ws = [torch.nn.Parameter(torch.full((3,), 0.3, dtype=torch.float64)) for _ in range(2)]

    def r_of(w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(X @ w) - y

    def linearize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return r_of(w.detach()), torch.func.jacrev(r_of)(w.detach())

    def normal(w: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        r, J = linearize(w)
        return float(r.square().sum()), J.T @ r, J.T @ J

    a, b = LevenbergMarquardt([ws[0]]), LevenbergMarquardt([ws[1]])
    for _ in range(5):
        sa = a.step(lambda: linearize(ws[0]), lambda: float(r_of(ws[0].detach()).square().sum()))
        sb = b.step_normal(lambda: normal(ws[1]), lambda: float(r_of(ws[1].detach()).square().sum()))
        assert sa.moved and sb.moved
        torch.testing.assert_close(ws[0].detach(), ws[1].detach(), rtol=1e-10, atol=1e-12)
        assert a.param_groups[0]["damping"] == pytest.approx(b.param_groups[0]["damping"], rel=1e-8)
