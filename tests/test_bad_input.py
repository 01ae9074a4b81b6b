"""Bad input raises a ValueError naming the field and what is allowed."""

import pytest
import torch

from cpikan.experiment import ModelConfig, build_model
from cpikan.losses import make_balancer
from cpikan.nn import MLP, ScaledCPIKAN
from cpikan.pde import make_problem
from cpikan.train import TrainConfig


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ScaledCPIKAN([1, 4, 1], 5, [1.0], [1.0]), r"domain: min must be < max"),
        (lambda: ScaledCPIKAN([1, 4, 1], 5, [2.0], [1.0]), r"domain: min must be < max"),
        (lambda: ScaledCPIKAN([1, 4, 1], 0, [0.0], [1.0]), r"degree: must be an integer ≥ 1"),
        (lambda: ScaledCPIKAN([2, 4, 1], 3, [0.0], [1.0]), r"layers: .*starting with the domain's 1 dimensions"),
        (lambda: ScaledCPIKAN([1, 4, 1], 3, [0.0], [1.0], init="he"), r"init: .*kaiming, xavier"),
        (lambda: ScaledCPIKAN([1, 4, 1], 3, [0.0], [1.0], squash="relu"), r"squash: .*tanh, none"),
        (lambda: ScaledCPIKAN([1, 4, 1], 3, [0.0], [1.0], dtype="float16"), r"dtype: .*float32"),
        (lambda: MLP([3, 4, 1], [0.0], [1.0]), r"layers: .*starting with the domain's 1 dimensions"),
        (lambda: TrainConfig(scheduler="step"), r"scheduler: .*exponential, cosine, plateau, multistep"),
        (lambda: TrainConfig(balancing="softadapt"), r"balancing: .*fixed, gradnorm, lra, config"),
        (lambda: TrainConfig(amp="fp8"), r"amp: .*none, bf16, fp16"),
        (lambda: TrainConfig(lr=0), r"lr: must be > 0"),
        (lambda: make_balancer("magic"), r"balancing: .*fixed, gradnorm, lra, config"),
        (lambda: make_problem("burgers"), r"problem: unknown 'burgers'; allowed: helmholtz1d"),
        (lambda: make_problem("diffusion", sampler="sobol"), r"sampler: .*lhs, uniform"),
        (lambda: ModelConfig(kind="transformer"), r"kind: .*cpikan, mlp"),
        (lambda: build_model(ModelConfig(hard_bc=True), make_problem("diffusion"), 0),
         r"model.hard_bc: 'diffusion' has no u = 0 faces.*allowed for: helmholtz2d, poisson3d"),
    ],
)
def test_bad_configuration(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_input_width():
    model = ScaledCPIKAN([2, 4, 1], 3, [0, 0], [1, 1])
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 2\)"):
        model(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 2\)"):
        model.derivatives(torch.zeros(5))


def test_non_finite_collocation_points():
    problem = make_problem("helmholtz2d")
    model = ScaledCPIKAN([2, 4, 1], 3, problem.lo, problem.hi)
    batch = problem.sample(torch.Generator().manual_seed(0)).to(torch.float32)
    batch.interior[3, 0] = float("nan")
    with pytest.raises(ValueError, match="interior: collocation points must be finite"):
        problem.loss_terms(model, batch)
