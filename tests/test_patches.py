"""Whole-wafer patch refinement: the window grid, and the interface term that closes seams."""

import numpy as np
import pytest

from cpikan.psi import classical, physics, synth
from cpikan.psi.patches import PatchRefineConfig, overlaps, patch_windows, refine_wafer


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


def test_the_interface_term_closes_the_seams():
    truth = synth.Wafer(synth.WaferSpec(height=96, width=96, seed=1, steps=0, cones=0)).full()
    buckets = physics.quantize(physics.add_noise(physics.render(truth), 0.05, rng=np.random.default_rng(0)), 16)
    start, _ = classical.reconstruct(buckets)
    cfg = PatchRefineConfig(rows=2, cols=2, overlap=16, steps=60, samples=1024, interface_samples=256)
    seams = {}
    for w in (cfg.interface_weight, 0.0):
        out, rep = refine_wafer(buckets, start, PatchRefineConfig(**{**cfg.__dict__, "interface_weight": w}))
        assert out.shape == truth.shape and np.isfinite(out).all()
        seams[w] = rep["seam_l2"]
    assert seams[cfg.interface_weight] < seams[0.0] / 3, seams
