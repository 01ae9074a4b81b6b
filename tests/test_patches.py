"""Whole-wafer patch refinement: the window grid, and the interface term that closes seams."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from cpikan.psi import classical, physics, synth
from cpikan.psi.patches import (
    CoupledLeastSquares,
    PatchField,
    PatchRefineConfig,
    _interface_gaps,
    overlaps,
    patch_windows,
    refine_wafer,
)
from cpikan.psi.physics import DEFAULT_PSI


def test_windows_are_equal_cores_tile_the_image_and_neighbours_overlap():
    wins = patch_windows(100, 130, 3, 4, 10)
    assert len({(w.h, w.w) for w in wins}) == 1
    cover = np.zeros((100, 130), int)
    for w in wins:
        r0, r1, c0, c1 = w.core
        assert w.r0 <= r0 and r1 <= w.r0 + w.h and w.c0 <= c0 and c1 <= w.c0 + w.w  # core inside
        assert 0 <= w.r0 and w.r0 + w.h <= 100 and 0 <= w.c0 and w.c0 + w.w <= 130
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all()
    pairs = overlaps(wins, 4)
    assert len(pairs) == 3 * 3 + 2 * 4  # horizontal + vertical neighbours
    assert all(b[1] - b[0] >= 10 or b[3] - b[2] >= 10 for _, _, b in pairs)
    with pytest.raises(ValueError, match="overlap: must be ≥ 2"):
        patch_windows(100, 100, 2, 2, 0)
    with pytest.raises(ValueError, match="rows: 8 patches with overlap 90 do not fit"):
        patch_windows(100, 100, 8, 2, 90)


def test_the_interface_term_closes_the_seams_with_adam_alone():
    truth = synth.Wafer(synth.WaferSpec(height=96, width=96, seed=1, steps=0, cones=0)).full()
    buckets = physics.quantize(physics.add_noise(physics.render(truth), 0.05, rng=np.random.default_rng(0)), 16)
    start, _ = classical.reconstruct(buckets)
    cfg = PatchRefineConfig(rows=2, cols=2, overlap=16, steps=60, samples=1024, interface_samples=256,
                            interface_weight=30.0, lm_steps=0)
    seams = {}
    for w in (cfg.interface_weight, 0.0):
        out, rep = refine_wafer(buckets, start, PatchRefineConfig(**{**cfg.__dict__, "interface_weight": w}))
        assert out.shape == truth.shape and np.isfinite(out).all()
        seams[w] = rep["seam_l2"]
    assert seams[cfg.interface_weight] < seams[0.0] / 3, seams


def test_the_coupled_normal_equations_are_those_of_the_dense_jacobian():
    """The block-assembled JᵀJ and Jᵀr of the LM finish equal the dense ones (jacrev of the
    stacked residual vector: data misfits and interface gaps)."""
    truth = synth.Wafer(synth.WaferSpec(height=40, width=40, seed=2, steps=0, cones=0)).full()
    buckets = physics.quantize(physics.render(truth), 16)
    start, _ = classical.reconstruct(buckets)
    cfg = PatchRefineConfig(rows=2, cols=2, overlap=8, hidden=(3,), degree=3, lm_samples=12,
                            lm_interface_samples=9, interface_weight=7.0)
    wins = patch_windows(40, 40, 2, 2, cfg.overlap)
    origin = torch.tensor([[w.c0, w.r0] for w in wins], dtype=torch.float64)
    field = PatchField(len(wins), wins[0].h, wins[0].w, cfg)
    gen = torch.Generator().manual_seed(0)
    for v in field.params.values():  # away from the zero start, so every block is exercised
        v.data.add_(0.3 * torch.randn(v.shape, generator=gen, dtype=v.dtype))
    I = torch.from_numpy(physics.dequantize(buckets))
    h0 = torch.from_numpy(start.astype(np.float64))
    ls = CoupledLeastSquares(field, I, h0, origin, (wins[0].h, wins[0].w), overlaps(wins, 2), cfg, DEFAULT_PSI, gen)
    loss, g, A = ls.normal()

    names = list(field.params)
    shapes = [field.params[n].shape for n in names]
    theta = torch.cat([field.params[n].detach().reshape(-1) for n in names])

    def stacked(t: torch.Tensor) -> torch.Tensor:
        field.params = dict(zip(names, (c.reshape(s) for c, s in zip(t.split([s.numel() for s in shapes]), shapes))))
        data = ls._residuals(field(ls.xy)).reshape(-1) / math.sqrt(ls.measured.numel())
        gaps = _interface_gaps(field, ls.probes, cfg.scale_um).reshape(-1)
        return torch.cat([data, math.sqrt(cfg.interface_weight / gaps.numel()) * gaps])

    r, J = stacked(theta).detach(), torch.func.jacrev(stacked)(theta)
    assert loss == pytest.approx(float(r.square().sum()), rel=1e-12)
    torch.testing.assert_close(g, J.T @ r, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(A, J.T @ J, rtol=1e-9, atol=1e-14)
    assert (A[: A.shape[0] // 4].abs().sum() > 0) and J.shape[1] == A.shape[0]


def test_the_lm_finish_closes_the_seams_far_below_independent_patches():
    truth = synth.Wafer(synth.WaferSpec(height=96, width=96, seed=1, steps=0, cones=0)).full()
    buckets = physics.quantize(physics.add_noise(physics.render(truth), 0.05, rng=np.random.default_rng(0)), 16)
    start, _ = classical.reconstruct(buckets)
    cfg = PatchRefineConfig(rows=2, cols=2, overlap=16, steps=60, samples=1024, lm_steps=10, lm_samples=1024,
                            lm_interface_samples=64, interface_weight=1e5)
    seams = {}
    for w in (cfg.interface_weight, 0.0):
        out, rep = refine_wafer(buckets, start, replace(cfg, interface_weight=w))
        lm = [h["loss"] for h in rep["history"] if "lm" in h]
        assert 0 < len(lm) <= 10 and all(b <= a for a, b in zip(lm, lm[1:]))
        seams[w] = rep["seam_l2"]
    assert seams[cfg.interface_weight] < seams[0.0] / 10, seams


def test_a_joint_finish_too_large_for_a_dense_solve_is_refused_before_training():
    buckets = physics.quantize(physics.render(np.zeros((200, 200))), 16)
    cfg = PatchRefineConfig(rows=8, cols=8, overlap=8, steps=1, lm_steps=1)  # 64 × 530 > 20 000
    with pytest.raises(ValueError, match="lm_steps: the joint finish solves a dense system of 64 patches"):
        refine_wafer(buckets, np.zeros((200, 200)), cfg)
