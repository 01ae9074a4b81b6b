"""The fast jet derivatives equal nested autograd for every model option."""

import pytest
import torch

from cpikan import diff
from cpikan.nn import MLP, ScaledCPIKAN


def _points(lo, hi, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    return lo_t + (hi_t - lo_t) * torch.rand(n, len(lo), generator=g, dtype=torch.float64)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _hard_bc(model, faces):
    model.zero_faces = faces
    return model


def _zero_ends(model, faces, ends):
    model.zero_faces, model.zero_ends = faces, ends
    return model


MODELS = {
    "cpikan_1d": lambda: ScaledCPIKAN([1, 6, 1], 8, [-1], [1], dtype="float64", seed=1),
    "cpikan_2d_tanh": lambda: ScaledCPIKAN([2, 8, 8, 1], 5, [-6, 0], [6, 1], dtype="float64", seed=1),
    "cpikan_3d_none": lambda: ScaledCPIKAN([3, 5, 1], 4, [0] * 3, [1] * 3, squash="none",
                                           dtype="float64", seed=2),
    "cpikan_layernorm": lambda: ScaledCPIKAN([2, 8, 8, 1], 5, [-1, -1], [1, 1], layernorm=True,
                                             dtype="float64", seed=3),
    "cpikan_fourier": lambda: ScaledCPIKAN([2, 8, 1], 3, [-1, -1], [1, 1], fourier_features=4,
                                           dtype="float64", seed=4),
    "cpikan_hard_bc": lambda: _hard_bc(ScaledCPIKAN([3, 6, 1], 4, [0, -1, 2], [1, 1, 5],
                                                    dtype="float64", seed=7), (0, 2)),
    "cpikan_one_face": lambda: _zero_ends(ScaledCPIKAN([2, 6, 1], 4, [0, -1], [1, 1], dtype="float64",
                                                       seed=8), (1,), ((0, -1),)),
    "wavelet_kan": lambda: ScaledCPIKAN([2, 5, 4, 1], 4, [-2, 0], [2, 1], basis="wavelet",
                                        dtype="float64", seed=9),
    "mlp": lambda: MLP([2, 19, 19, 1], [-6, 0], [6, 1], dtype="float64", seed=5),
    "mlp_fourier_2out": lambda: MLP([3, 16, 2], [0] * 3, [2] * 3, fourier_features=3,
                                    dtype="float64", seed=6),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_jet_matches_nested_autograd(name):
    model = MODELS[name]()
    x = _points(model.lo.tolist(), model.hi.tolist())
    fast = model.derivatives(x)
    ref = diff.derivatives_autograd(model, x)
    for field in ("u", "du", "d2u"):
        assert _rel(getattr(fast, field), getattr(ref, field)) < 1e-6, field


def test_jet_parameter_gradients_match_autograd():
    """The loss built on the jet has the same parameter gradient as the nested-autograd loss."""
    model = ScaledCPIKAN([2, 8, 8, 1], 5, [-6, 0], [6, 1], dtype="float64", seed=0)
    x = _points([-6, 0], [6, 1], n=64)
    grads = []
    for fn in (lambda m, x: m.derivatives(x), diff.derivatives_autograd):
        model.zero_grad()
        d = fn(model, x)
        (d.dx(1) - 0.1 * d.dxx(0)).square().mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert _rel(grads[0], grads[1]) < 1e-6


def test_chebyshev_basis_matches_closed_form():
    z = torch.linspace(-0.99, 0.99, 51, dtype=torch.float64)
    t, dt, d2t = diff.chebyshev_basis(z, 7)
    theta = torch.arccos(z)
    for k in range(8):
        assert torch.allclose(t[:, k], torch.cos(k * theta), atol=1e-12)
        # T_k' = k U_{k-1}, U_{k-1}(cos θ) = sin(kθ)/sin θ
        assert torch.allclose(dt[:, k], k * torch.sin(k * theta) / torch.sin(theta), atol=1e-9)
    # T_k'' from the Chebyshev ODE: (1 − z²)T'' − zT' + k²T = 0
    for k in range(8):
        lhs = (1 - z**2) * d2t[:, k] - z * dt[:, k] + k**2 * t[:, k]
        assert lhs.abs().max() < 1e-9


def test_works_without_grad_and_in_float32():
    model = ScaledCPIKAN([2, 8, 1], 5, [-1, -1], [1, 1], seed=0)
    x = _points([-1, -1], [1, 1]).float()
    with torch.no_grad():
        d = model.derivatives(x)
    ref = diff.derivatives_autograd(model, x)
    assert d.u.dtype == torch.float32
    assert _rel(d.d2u, ref.d2u.detach()) < 1e-4


def test_hard_bc_is_zero_on_its_faces_only():
    model = _hard_bc(ScaledCPIKAN([2, 6, 1], 4, [-1, 0], [1, 3], dtype="float64", seed=8), (1,))
    y_faces = torch.tensor([[0.3, 0.0], [-0.7, 3.0]], dtype=torch.float64)
    x_faces = torch.tensor([[-1.0, 1.5], [1.0, 1.5]], dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model(y_faces), torch.zeros(2, 1, dtype=torch.float64))
        assert model(x_faces).abs().min() > 0  # x is not constrained
