"""Time marching (cpikan.marching): windows chain their initial data, and the marched model
answers each time from its own window."""

from __future__ import annotations

import math

import pytest
import torch

from cpikan.config import ConfigError
from cpikan.experiment import ModelConfig, PINNConfig
from cpikan.marching import MarchedModel, MarchingConfig, train_marching
from cpikan.train import TrainConfig


def small(windows: int = 2) -> MarchingConfig:
    base = PINNConfig("allen_cahn", {"modes": 128, "dt": 2e-4, "n_interior": 200, "n_initial": 50, "n_boundary": 20,
                                     "eval_resolution": 11},
                      ModelConfig(hidden=(4,), degree=3, dtype="float64"), TrainConfig(adam_steps=0, lm_steps=3))
    return MarchingConfig(base, windows=windows)


def test_windows_chain_and_the_marched_model_routes_by_time():
    model, problem, results = train_marching(small())
    assert [(r.t0, r.t1) for r in results] == [(0.0, 0.5), (0.5, 1.0)]
    first, second = model.windows
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    # window 2's initial data is window 1's prediction at t = 0.5, not the initial condition
    ic_pts, ic_vals = problem.window(0.5, 1.0, (lambda v: first(torch.stack(
        [v, torch.full_like(v, 0.5)], 1))[:, 0])).sample(torch.Generator().manual_seed(0)).conditions["ic"]
    assert torch.allclose(ic_vals, first(ic_pts)[:, 0])
    pts = torch.stack([x, torch.tensor([0.0, 0.2, 0.5, 0.5000001, 0.7, 1.0, 0.49])], 1)
    want = torch.cat([(first if t <= 0.5 else second)(p[None]) for p, t in zip(pts, pts[:, 1].tolist())])
    assert torch.allclose(model(pts), want, rtol=0, atol=1e-12)  # one row at a time: the same to rounding
    assert 0 < problem.evaluate(model)["rel_l2"] < float("inf")


def test_marching_replays_exactly_and_its_config_round_trips():
    cfg = small()
    assert MarchingConfig.from_json(cfg.to_json()).to_json() == cfg.to_json()
    a, b = train_marching(cfg)[0], train_marching(MarchingConfig.from_json(cfg.to_json()))[0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_hard_starts_join_the_windows_exactly_and_the_corner_layer_rides_along():
    cfg = small()
    cfg.hard_initial, cfg.known_part = True, True
    model, problem, results = train_marching(cfg)
    first, second = model.windows
    x = torch.linspace(-1, 1, 9, dtype=torch.float64)
    joint = torch.stack([x, torch.full_like(x, 0.5)], 1)
    # the second window starts from the first's end line exactly, ends and corner layer included
    assert torch.allclose(second(joint), first(joint), rtol=0, atol=1e-14)
    d1, d2 = first.derivatives(joint), second.derivatives(joint)
    assert torch.allclose(d2.dx(0), d1.dx(0), rtol=0, atol=1e-12)
    assert torch.allclose(d2.dxx(0), d1.dxx(0), rtol=0, atol=1e-10)
    # only the first window fits its initial line
    assert "ic" in problem.window(0.0, 0.5).sample(torch.Generator()).conditions
    assert "ic" not in problem.window(0.5, 1.0, lambda v: v, fitted_start=False).sample(torch.Generator()).conditions
    assert all(r.rel_l2 < float("inf") for r in results)


def test_corner_layer_jet_is_exact_and_carries_the_corner():
    from cpikan.diff import derivatives_autograd
    from cpikan.pde.allen_cahn import CornerLayer

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 0.3], dtype=torch.float64)
    x = x + torch.tensor([-1.0, 1e-3], dtype=torch.float64)
    x[:4, 0] = torch.tensor([0.999, -0.999, 0.9999, -0.995], dtype=torch.float64)
    layer = CornerLayer()
    fast, slow = layer.derivatives(x), derivatives_autograd(layer, x)
    for name in ("u", "du", "d2u"):
        assert torch.allclose(getattr(fast, name), getattr(slow, name).detach(), rtol=1e-10, atol=1e-12), name
    ends = torch.tensor([[-1.0, 0.05], [1.0, 0.05], [0.3, 0.0]], dtype=torch.float64)
    d = layer.derivatives(ends)
    # the slope jump 4·e^{-10t} that the network's outer solution leaves at the periodic ends, none at t = 0
    assert float(d.dx(0)[0] - d.dx(0)[1]) == pytest.approx(-4 * math.exp(-0.5), rel=1e-12)
    assert float(layer(ends)[2, 0]) == 0.0


def test_bad_marching_input_is_refused_by_name():
    with pytest.raises(ConfigError, match="base.problem"):
        MarchingConfig(PINNConfig("helmholtz1d"))
    with pytest.raises(ConfigError, match="windows"):
        MarchingConfig(windows=0)
    from cpikan.pde.allen_cahn import AllenCahn

    with pytest.raises(ValueError, match="needs the state at t0"):
        AllenCahn(modes=128, dt=2e-4).window(0.5, 1.0)
    with pytest.raises(ValueError, match="model: 0 trained windows"):
        MarchedModel([0.0, 1.0])(torch.zeros(1, 2, dtype=torch.float64))


class _Front(torch.nn.Module):
    """s(x) = sin 3x + tanh(x/w) with its exact jet: a smooth line with one steep front."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.w = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.derivatives(x).u

    def derivatives(self, x: torch.Tensor):
        from cpikan.diff import Derivatives

        v = x[:, :1]
        th = torch.tanh(v / self.w)
        sech2 = 1 - th**2
        du = 3 * torch.cos(3 * v) + sech2 / self.w
        d2u = -9 * torch.sin(3 * v) - 2 * th * sech2 / self.w**2
        zero = torch.zeros_like(du)
        return Derivatives(torch.sin(3 * v) + th, torch.stack([du, zero], 1), torch.stack([d2u, zero], 1))


def test_hermite_line_copies_a_line_with_its_jet_and_refuses_one_it_cannot_resolve():
    from torch.func import vmap

    from cpikan.marching import HermiteLine

    line = _Front(0.01)
    copy = HermiteLine.fit(line, -1.0, 1.0, 16385)
    x = torch.rand(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    got, want = copy.derivatives(x), line.derivatives(x)
    assert torch.allclose(got.u, want.u, rtol=0, atol=1e-13)
    assert torch.allclose(got.du, want.du, rtol=0, atol=1e-8)  # slopes up to 100
    assert torch.allclose(got.d2u, want.d2u, rtol=0, atol=1e-4)  # curvatures up to 7.7e3
    assert torch.equal(got.du[:, 1], torch.zeros_like(got.du[:, 1]))  # constant in t
    # row by row under vmap (the LM Jacobian's path) as in one batch
    assert torch.allclose(vmap(lambda r: copy(r[None])[0])(x), copy(x), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="end_line_nodes: 2001 nodes leave an interpolation error"):
        HermiteLine.fit(line, -1.0, 1.0, 2001)


def test_copied_start_lines_join_the_windows_like_the_exact_chain():
    cfg = small(3)
    cfg.hard_initial, cfg.known_part = True, True
    exact = train_marching(cfg)[0]
    cfg.end_line_nodes = 4097
    copied, _, results = train_marching(cfg)
    x = torch.linspace(-1, 1, 9, dtype=torch.float64)
    for k, t in ((1, 1 / 3), (2, 2 / 3)):
        joint = torch.stack([x, torch.full_like(x, t)], 1)
        before, after = copied.windows[k - 1].derivatives(joint), copied.windows[k].derivatives(joint)
        assert torch.allclose(after.u, before.u, rtol=0, atol=1e-12)
        assert torch.allclose(after.dx(0), before.dx(0), rtol=0, atol=1e-9)
    grid = torch.stack([x, torch.full_like(x, 0.9)], 1)
    assert torch.allclose(copied(grid), exact(grid), rtol=0, atol=1e-8)
    with pytest.raises(ConfigError, match="end_line_nodes"):
        MarchingConfig(cfg.base, end_line_nodes=1)
