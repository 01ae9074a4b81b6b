"""PDE definitions: the reference solutions satisfy residuals and conditions; sampling."""

import math
import re

import numpy as np
import pytest
import torch

from cpikan import diff, sampling
from cpikan.pde import PROBLEMS, Problem, make_problem


@pytest.mark.parametrize("name", sorted(set(PROBLEMS) - {"allen_cahn"}))  # numerical reference: below
def test_exact_solution_has_zero_residual(name):
    problem = make_problem(name)
    gen = torch.Generator().manual_seed(0)
    x = problem.sample_interior(200, gen)
    d = diff.derivatives_autograd(lambda z: problem.exact(z)[:, None], x)
    if name == "reaction_diffusion_inverse":  # residual with the true coefficients
        with torch.no_grad():
            problem.log_D.fill_(math.log(problem.D_true))
            problem.log_kappa.fill_(math.log(problem.kappa_true))
    r = problem.residual(d, x) / problem.residual_scale
    assert r.abs().max() < 1e-9


@pytest.mark.parametrize("name", sorted(set(PROBLEMS) - {"allen_cahn"}))  # periodic: pairs of ends
def test_conditions_lie_on_the_domain_faces(name):
    problem = make_problem(name)
    batch = problem.sample(torch.Generator().manual_seed(1))
    lo, hi = torch.tensor(problem.lo), torch.tensor(problem.hi).double()
    assert ("bc" in batch.conditions) == (problem.n_boundary > 0)  # regression1d has no boundary
    pts, _ = batch.conditions.get("bc", (torch.zeros(0, problem.dim), None))
    space = problem.dim - (1 if problem.time_dependent else 0)
    on_face = ((pts[:, :space] - lo[:space]).abs() < 1e-12) | ((pts[:, :space] - hi[:space]).abs() < 1e-12)
    assert on_face.any(dim=1).all()
    if problem.time_dependent:
        ic, _ = batch.conditions["ic"]
        assert (ic[:, -1] == problem.lo[-1]).all()
    assert ((batch.interior >= lo) & (batch.interior <= hi)).all()


def test_helmholtz1d_zero_field_is_not_a_solution():
    """u = 0 meets u'' + k²u = 0 and u(±1) = 0; the Neumann term rules it out."""
    problem = make_problem("helmholtz1d")
    batch = problem.sample(torch.Generator().manual_seed(0))

    class Zero(torch.nn.Module):
        def forward(self, x):
            return 0 * x

        def derivatives(self, x):
            return diff.derivatives_autograd(lambda z: 0 * z.square(), x)

    terms = problem.loss_terms(Zero(), batch)
    assert terms["pde"] == 0 and terms["bc"] < 1e-20 and terms["bc_flux"] > 0.5


def test_inverse_data_is_fixed_and_noisy():
    a = make_problem("reaction_diffusion_inverse")
    b = make_problem("reaction_diffusion_inverse")
    assert torch.equal(a.data_points, b.data_points) and torch.equal(a.data_values, b.data_values)
    clean = a.exact(a.data_points)
    noise = (a.data_values - clean).std() / clean.std()
    assert 0.005 < float(noise) < 0.02


def test_latin_hypercube_fills_every_stratum():
    pts = sampling.latin_hypercube(50, [0, -1], [1, 1], torch.Generator().manual_seed(0))
    for j, (lo, hi) in enumerate([(0, 1), (-1, 1)]):
        strata = ((pts[:, j] - lo) / (hi - lo) * 50).floor().long()
        assert sorted(strata.tolist()) == list(range(50))


def test_rar_d_prefers_large_residuals():
    cands = torch.linspace(0, 1, 1000, dtype=torch.float64)[:, None]
    gen = torch.Generator().manual_seed(0)
    picked = sampling.rar_d(cands, lambda x: (x[:, 0] > 0.9).double() * 100.0, 100, gen, k=2, c=0.0)
    assert (picked[:, 0] > 0.9).all()
    w = sampling.rar_d_weights(torch.tensor([1.0, 3.0]), k=1, c=1.0)
    # density ∝ r/mean(r) + c = [0.5 + 1, 1.5 + 1]
    assert torch.allclose(w, torch.tensor([1.5, 2.5], dtype=torch.float64) / 4.0)


def test_allen_cahn_reference_converges_and_interpolates():
    import numpy as np

    from cpikan.pde.allen_cahn import AllenCahn, etdrk4

    u = {n: etdrk4(n, 2e-4, n_times=1001)[2] for n in (128, 256, 512)}

    def rel(n):
        return np.linalg.norm(u[n] - u[2 * n][:, ::2]) / np.linalg.norm(u[2 * n])

    assert rel(256) < 3e-5 and rel(256) < rel(128) / 3  # measured 2.5e-4 → 2.1e-5 (the C⁰ initial kink)
    problem = AllenCahn(modes=256, dt=2e-4)
    x, times = etdrk4(256, 2e-4, n_times=2)[0], np.linspace(0, 1, 1001)
    nodes = [(i, j) for i in (0, 200, 1000) for j in (0, 77, 200)]  # on the stored 201 times
    pts = torch.tensor([[x[j], times[i]] for i, j in nodes], dtype=torch.float64)
    assert (problem.exact(pts) - torch.tensor([u[256][i, j] for i, j in nodes])).abs().max() < 1e-12
    between = [(i, j) for i in range(3, 1000, 50) for j in range(5, 256, 25)]
    pts = torch.tensor([[x[j], times[i]] for i, j in between], dtype=torch.float64)
    assert (problem.exact(pts) - torch.tensor([u[256][i, j] for i, j in between])).abs().max() < 1e-7
    batch = problem.sample(torch.Generator().manual_seed(0))
    assert set(problem.terms(batch)) == {"pde", "ic", "periodic", "periodic_dx"}


class FindK(Problem):
    """A lab's inverse problem: u'' = −k² sin(kx) with k unknown, u observed at 30 points."""

    name = "find_k"
    coords = ("x",)

    def __init__(self):
        super().__init__((0.0,), (1.0,), n_interior=200, n_boundary=2)
        self.k = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def exact(self, x):
        return torch.sin(math.pi * x[:, 0])

    def residual(self, d, x):
        return d.dxx(0) + self.k**2 * torch.sin(self.k * x[:, 0])

    def data(self):
        x = torch.linspace(0, 1, 30, dtype=torch.float64)[:, None]
        return {"obs": (x, self.exact(x))}


def test_an_inverse_problems_own_coefficient_is_a_result(mlruns):
    """What a lab's inverse run is for, its unknown coefficient, is among its results (it
    trained, and was recorded nowhere), and each trained parameter is found, under names
    MLflow takes."""
    from cpikan.experiment import ModelConfig, build_model
    from cpikan.pde.check import check_problem
    from cpikan.train import TrainConfig, Trainer

    problem = FindK()
    model = build_model(ModelConfig(hidden=(8, 8), dtype="float64"), problem, 0)
    check_problem(problem, model)
    result = Trainer(model, problem, TrainConfig(adam_steps=200, lm_steps=100)).fit()
    assert result.metrics["problem.k"] == pytest.approx(math.pi, rel=1e-3)
    assert result.metrics["rel_l2"] < 1e-3
    inverse = make_problem("reaction_diffusion_inverse")
    learned = inverse.learned()
    assert set(learned) == {"problem.log_D", "problem.log_kappa"}
    assert learned["problem.log_D"] == float(inverse.log_D)
    from tracking.tracker import Tracker

    problem.w = torch.nn.Parameter(torch.arange(3.0))  # a small vector of unknowns
    with Tracker("t/inverse") as run:
        run.log_results(problem.learned())
    from tracking import store

    logged = store.client().get_run(run.run_id).data.metrics
    assert logged == {"problem.k": result.metrics["problem.k"], "problem.w.0": 0.0, "problem.w.1": 1.0, "problem.w.2": 2.0}


def test_a_problem_that_computes_with_numpy_is_refused_naming_what_to_return():
    """exact(x) in numpy (a reference from a solver's arrays) failed inside the sampler
    ('ndarray has no attribute to'); a residual in numpy carries no gradient to the network."""
    from cpikan.experiment import ModelConfig, build_model
    from cpikan.pde.check import check_problem

    class NumpyExact(FindK):
        def exact(self, x):
            return np.sin(math.pi * x[:, 0].numpy())

    class NumpyResidual(FindK):
        def residual(self, d, x):
            return np.zeros(len(x))

    for cls, message in ((NumpyExact, "exact(x) gives a ndarray; return a torch tensor"),
                         (NumpyResidual, "'pde' term gives a ndarray; it must be a torch tensor")):
        problem = cls()
        with pytest.raises(ValueError, match=re.escape(f"problem: find_k's {message}")):
            check_problem(problem, build_model(ModelConfig(hidden=(4,)), problem, 0))


class Oscillator(Problem):
    """A first-order system of two fields: u' = v, v' = −π²u on [0, 1]; u = sin πx, v = π cos πx."""

    name = "oscillator"
    coords = ("x",)
    outputs = 2

    def __init__(self):
        super().__init__((0.0,), (1.0,), n_interior=100, n_boundary=2)

    def exact(self, x):
        return torch.stack([torch.sin(math.pi * x[:, 0]), math.pi * torch.cos(math.pi * x[:, 0])], dim=1)

    def residual(self, d, x):
        return torch.stack([d.dx(0, 0) - d.u[:, 1], d.dx(0, 1) + math.pi**2 * d.u[:, 0]], dim=1)


def test_a_system_of_equations_trains_each_field_and_each_equation():
    """A lab's system (Schrödinger's real and imaginary parts, a reaction–diffusion pair) is
    one network with a field per output: an equation per field and a condition per field,
    each a loss term LM takes; every field's error is a result."""
    from cpikan.experiment import ModelConfig, build_model
    from cpikan.pde.check import check_problem
    from cpikan.train import TrainConfig, Trainer

    problem = Oscillator()
    model = build_model(ModelConfig(hidden=(8, 8), dtype="float64"), problem, 0)
    check_problem(problem, model)
    terms = problem.terms(problem.sample(torch.Generator().manual_seed(0)).to(torch.float64))
    assert sorted(terms) == ["bc_0", "bc_1", "pde_0", "pde_1"]
    result = Trainer(model, problem, TrainConfig(adam_steps=100, lm_steps=100)).fit()
    assert result.metrics["rel_l2"] < 1e-4 and max(result.metrics["rel_l2_0"], result.metrics["rel_l2_1"]) < 1e-4

    # the methods that read the PDE's residual read a system's: RAR-D draws by its equations' norm, LRA
    # weighs each condition against the largest equation gradient (it skipped balancing: no 'pde' term)
    problem = Oscillator()
    model = build_model(ModelConfig(hidden=(8, 8), dtype="float64"), problem, 0)
    trainer = Trainer(model, problem, TrainConfig(adam_steps=20, lm_steps=0, rar_every=10, rar_points=5,
                                                  rar_candidates=200, balancing="lra", balance_every=5))
    trainer.fit()
    assert len(trainer.batch.interior) == problem.n_interior + 5
    assert all(trainer.balancer.weight(n) != 1.0 for n in ("bc_0", "bc_1"))
    assert trainer.balancer.weight("pde_0") == trainer.balancer.weight("pde_1") == 1.0

    class OneEquation(Oscillator):
        def residual(self, d, x):
            return d.dx(0, 0) - d.u[:, 1]

    with pytest.raises(ValueError, match=r"'pde_0' term failed on 4 points \(ValueError: residual: gives shape "
                                         r"\(4,\); a system of 2 fields gives one equation per field, \(4, 2\)\)"):
        check_problem(OneEquation(), model)
