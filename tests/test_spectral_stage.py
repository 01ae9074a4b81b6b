"""The spectral stage: a tensor-Chebyshev expansion fitted by linearised least squares."""

import numpy as np
import pytest
import torch
from torch.func import jacfwd

from cpikan.diff import derivatives_autograd
from cpikan.experiment import ModelConfig, PINNConfig, build
from cpikan.multistage import MultiStageConfig, StagedModel, spectral_batch, train_multistage
from cpikan.nn import ScaledCPIKAN, TensorChebyshev
from cpikan.pde import Collocation
from cpikan.pde.allen_cahn import AllenCahn
from cpikan.train import TrainConfig
from cpikan.train.linear_fit import linearise, solve


def test_tensor_chebyshev_jets_match_autograd():
    stage = TensorChebyshev((-6.0, 0.0), (6.0, 1.0), (7, 4))
    with torch.no_grad():
        stage.coef.copy_(torch.randn(stage.n_features, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    x = torch.rand(9, 2, dtype=torch.float64) * torch.tensor([12.0, 1.0]) - torch.tensor([6.0, 0.0])
    d, ref = stage.derivatives(x), derivatives_autograd(stage, x)
    for a, b in ((d.u, ref.u), (d.du, ref.du), (d.d2u, ref.d2u)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    assert torch.allclose(stage(x), d.u, rtol=0, atol=1e-13)


def test_the_linearised_jacobian_is_the_coefficient_jacobian_on_a_nonlinear_problem():
    """Allen–Cahn: a cubic residual, and periodic terms that evaluate the model on points they
    build themselves (both ends stacked): the forward-mode J must still be ∂r/∂c exactly."""
    problem = AllenCahn(n_interior=40, n_initial=10, n_boundary=8)
    net = ScaledCPIKAN([2, 5, 1], 4, problem.lo, problem.hi, dtype="float64", seed=0)
    stage = TensorChebyshev(problem.lo, problem.hi, (5, 3))
    with torch.no_grad():
        stage.coef.normal_(generator=torch.Generator().manual_seed(1))
    model = StagedModel([net], [1.0])
    model.add(stage, 1e-2)
    batch = problem.sample(torch.Generator().manual_seed(2)).to(torch.float64)
    for name, term in problem.terms(batch).items():
        r, j = linearise(model, stage, 1e-2, term)
        j = torch.from_numpy(j)
        coef = stage.coef.detach().clone()

        def residual(c, term=term, coef=coef):
            del stage.coef
            stage.coef = c
            try:
                return term.residuals(model).reshape(-1)
            finally:
                del stage.coef
                stage.coef = torch.nn.Parameter(coef.clone())

        assert torch.allclose(r, residual(coef).detach(), rtol=0, atol=1e-14), name
        assert torch.allclose(j, jacfwd(residual)(coef), rtol=1e-9, atol=1e-12), name


def test_a_spectral_stage_takes_a_regression_to_1e_12_in_seconds():
    base = PINNConfig("regression1d", {"n_interior": 1000}, ModelConfig(hidden=(16,), degree=8, dtype="float64"),
                      TrainConfig(adam_steps=0, lm_steps=30))
    cfg = MultiStageConfig(base, stages=2, stage_kind="spectral", spectral_degrees=(128,))
    model, _, stages = train_multistage(cfg)
    assert stages[0].rel_l2 > 1e-6 and stages[-1].rel_l2 <= 1e-12, [s.rel_l2 for s in stages]
    again = MultiStageConfig.from_json(cfg.to_json())
    assert again == cfg
    replayed, _, _ = train_multistage(again)  # the least-squares stage replays bit for bit too
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), replayed.state_dict().values()))


def test_spectral_points_follow_the_chebyshev_density_on_every_face():
    problem, _ = build(PINNConfig("diffusion", {}, ModelConfig(hidden=(4,), degree=3, dtype="float64")))
    batch = spectral_batch(problem, TensorChebyshev(problem.lo, problem.hi, (20, 5)), 3.0, seed=0)
    assert len(batch.interior) == 3 * 21 * 6
    assert len(batch.conditions["bc"][0]) == 3 * 2 * 6 and len(batch.conditions["ic"][0]) == 3 * 21
    x = batch.interior[:, 0] / 6.0
    near_faces = float(((x.abs() > 0.9)).double().mean())  # arcsine density: 29 % of points; uniform: 10 %
    assert 0.22 < near_faces < 0.36
    assert problem.sampler == "lhs" and problem.n_interior == 2000  # the problem itself unchanged


def test_a_total_degree_basis_keeps_the_simplex_of_multi_indices():
    full, total = (TensorChebyshev((0.0,) * 3, (1.0,) * 3, (8, 8, 8), basis=b) for b in ("tensor", "total"))
    assert full.n_features == 9**3 and total.n_features == 165  # C(8 + 3, 3)
    assert int(total.index.sum(1).max()) == 8
    x = torch.rand(5, 3, dtype=torch.float64)
    keep = [i for i, k in enumerate(full.index.tolist()) if sum(k) <= 8]
    assert torch.equal(full.features(x)[:, :, keep], total.features(x))


def test_spectral_settings_are_checked():
    base = PINNConfig("diffusion", {}, ModelConfig(hidden=(4,), degree=3, dtype="float64"))
    with pytest.raises(ValueError, match="spectral_degrees"):
        MultiStageConfig(base, stage_kind="spectral")
    problem, _ = build(base)
    with pytest.raises(ValueError, match="spectral_degrees: one degree per coordinate"):
        spectral_batch(problem, TensorChebyshev((0.0,), (1.0,), (20,)), 3.0, seed=0)
    with pytest.raises(ValueError, match="degrees"):
        TensorChebyshev((0.0,), (1.0,), (3, 3))
    with pytest.raises(ValueError, match="stage_kind"):
        MultiStageConfig(base, stage_kind="splines", spectral_degrees=(3, 3))


def test_a_stage_fits_only_single_output_models():
    problem, _ = build(PINNConfig("diffusion", {}, ModelConfig(hidden=(4,), degree=3, dtype="float64")))
    two = ScaledCPIKAN([2, 3, 2], 3, problem.lo, problem.hi, dtype="float64", seed=0)
    stage = TensorChebyshev(problem.lo, problem.hi, (2, 2))
    term = problem.terms(Collocation(torch.zeros(3, 2, dtype=torch.float64)))["pde"]
    with pytest.raises(ValueError, match="one output"):
        linearise(StagedModel([two], [1.0]), stage, 1.0, term)


def test_the_least_squares_solve_drops_a_dependent_column_instead_of_blowing_up():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 6))
    b = rng.standard_normal(50)
    full = solve(a.copy(), b, 1e-14)
    assert np.allclose(full, np.linalg.lstsq(a, b, rcond=None)[0], atol=1e-12)
    dup = np.column_stack([a, a[:, 0]])  # rank 6 of 7
    x = solve(dup, b, 1e-12)
    assert np.abs(x).max() < 10 and np.allclose(dup @ x, a @ full, atol=1e-10)
