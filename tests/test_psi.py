"""PSI: forward model, quantisation, synthetic wafers on disk, classical baseline, physics loss."""

import json

import numpy as np
import pytest
import torch

from cpikan.psi import classical, physics, synth
from cpikan.psi.loss import physics_loss, render_torch


def test_forward_model_channels_are_laser_major():
    h = np.array([[1.25]])
    I = physics.render(h)
    assert I.shape == (16, 1, 1)
    cfg = physics.PSIConfig()
    for l, lam in enumerate(cfg.wavelengths):
        for k in range(4):
            expected = 128 + 100 * np.cos(4 * np.pi * 1.25 / lam + k * np.pi / 2)
            assert I[l * 4 + k, 0, 0] == pytest.approx(expected, abs=1e-4)


def test_quantisation_round_trip_and_noise_models():
    I = physics.render(np.linspace(0, 35, 1000).reshape(10, 100))
    for bits, tol in ((8, 0.5), (16, 0.5 / 256)):
        q = physics.quantize(I, bits)
        assert q.dtype == (np.uint8 if bits == 8 else np.uint16)
        assert np.abs(physics.dequantize(q) - I).max() <= tol + 1e-4
    rng = np.random.default_rng(0)
    g = physics.add_noise(I, 0.05, "gaussian", rng) - I
    assert g.std() == pytest.approx(5.0, rel=0.05)
    s = physics.add_noise(I, 0.05, "shot", rng) - I
    bright, dark = I > 200, I < 60
    assert s[bright].std() > 1.5 * s[dark].std()  # ∝ √I
    with pytest.raises(ValueError, match="bits: allowed 8 or 16"):
        physics.quantize(I, 12)


def test_synthetic_wafer_written_in_blocks(tmp_path):
    spec = synth.WaferSpec(height=300, width=200, seed=3, noise=0.01)
    out = synth.write_dataset(spec, tmp_path / "w", rows_per_block=64, progress=False)
    b = np.load(out / "buckets.npy", mmap_mode="r")
    h = np.load(out / "height.npy", mmap_mode="r")
    assert b.shape == (16, 300, 200) and b.dtype == np.uint16
    assert h.shape == (300, 200) and h.dtype == np.float32
    assert 0.0 < h.min() and h.max() <= 35.0 and h.max() - h.min() > 20
    assert np.array_equal(h, synth.Wafer(spec).full())  # blocks equal the whole
    assert json.loads((out / "meta.json").read_text())["spec"]["seed"] == 3
    assert not list(out.glob("*.part"))


def test_classical_noise_free_rmse_below_1nm():
    rng = np.random.default_rng(0)
    h = rng.uniform(0, 35, size=(200, 300))
    est, mask = classical.reconstruct(physics.quantize(physics.render(h), 16), rows_per_chunk=64)
    rmse_nm = float(np.sqrt(np.mean((est - h) ** 2)) * 1000)
    assert rmse_nm <= 1.0 and mask.all()


def test_classical_masks_low_modulation():
    I = physics.render(np.full((4, 4), 10.0))
    I[:, :, :2] = 128.0  # no fringe contrast in the first two columns
    _, mask = classical.reconstruct(I)
    assert not mask[:, :2].any() and mask[:, 2:].all()


def _exposed(h, A, B, bits, noise, rng):
    """Buckets of ``h`` at mean A and fringe amplitude B (counts), Gaussian noise of σ =
    ``noise`` counts plus shot noise, stored as ``bits``-bit counts as they are."""
    I = physics.render(h, physics.PSIConfig(A=A, B=B)).astype(np.float64)
    I += rng.standard_normal(I.shape) * np.sqrt(noise**2 + (I if bits == 16 else 0))
    return np.clip(np.rint(I), 0, (1 << bits) - 1).astype(np.uint16 if bits == 16 else np.uint8)


def test_the_mask_does_not_depend_on_exposure_or_bit_depth():
    """A 12-bit camera in a 16-bit file and a dim 8-bit exposure: good fringes, all valid
    (the mask compared B with the nominal 128 intensity units and flagged every pixel)."""
    rng = np.random.default_rng(0)
    h = rng.uniform(-25, 25, size=(60, 60))
    for A, B, bits, noise in ((2000, 1000, 16, 2.0), (40, 10, 8, 0.5)):
        flags = np.zeros(h.shape, np.uint8)
        est, mask = classical.reconstruct(_exposed(h, A, B, bits, noise, rng), h_min=-30, h_max=30,
                                          flags_out=flags)
        assert mask.mean() > 0.99 and np.array_equal(mask, flags == 0), (A, B, np.unique(flags))
        assert float(np.sqrt(np.mean((est - h)[mask] ** 2))) < 0.02


def test_the_mask_flags_noise_and_clipping_by_cause():
    """Fringes barely above the noise (B/σ ≈ 2: the residual alone keeps pixels a fringe
    order off) and a saturated exposure are flagged, each as its own cause; no pixel a
    fringe order off is kept."""
    rng = np.random.default_rng(1)
    h = rng.uniform(-25, 25, size=(100, 100))
    noisy = _exposed(h, 2000, 100, 16, 2.0, rng)  # B/σ ≈ 100/45
    phi, _ = classical.phase_and_modulation(noisy)
    res = np.empty(h.shape)
    alone = classical.height_from_phase(phi, h_min=-30, h_max=30, residual=res)
    assert ((np.abs(alone - h) > 1) & (res <= classical.MAX_RESIDUAL)).sum() > 100  # what the residual lets through
    flags = np.zeros(h.shape, np.uint8)
    est, mask = classical.reconstruct(noisy, h_min=-30, h_max=30, flags_out=flags)
    assert not mask.any() and (flags == classical.NOISY).mean() > 0.9  # the rest: B/A under 2 % by chance
    assert set(np.unique(flags)) <= {classical.NOISY, classical.LOW_CONTRAST}
    clipped = _exposed(h, 200, 100, 8, 0.5, rng)  # A + B > 255
    flags = np.zeros(h.shape, np.uint8)
    _, mask = classical.reconstruct(clipped, h_min=-30, h_max=30, flags_out=flags)
    at_max = (clipped == 255).any(axis=0)
    assert at_max.mean() > 0.5 and np.array_equal(flags == classical.SATURATED, at_max)  # said as itself,
    assert set(np.unique(flags)) <= {0, classical.SATURATED}  # not as the noise or residual it causes


def test_the_noise_is_judged_at_each_pixels_own_brightness():
    """Shot noise grows with the light. A bright low-contrast region (A 3000, B 150: B/σ ≈ 2.7)
    beside a dark majority (A 200, B 150: B/σ ≈ 10) is flagged as noise, not judged by the
    dark pixels' σ (which kept ~16 % of it, some a fringe order off); a dark minority beside
    a bright majority (A 3000, B 600) is kept, not judged by the bright pixels' σ (all flagged)."""
    rng = np.random.default_rng(3)
    h = rng.uniform(-25, 25, size=(100, 100))
    dark = _exposed(h, 200, 150, 16, 2.0, rng)
    for bright_b, first_bright_col, bright_valid in ((150, 80, False), (600, 20, True)):
        counts = dark.copy()
        counts[..., first_bright_col:] = _exposed(h, 3000, bright_b, 16, 2.0, rng)[..., first_bright_col:]
        flags = np.zeros(h.shape, np.uint8)
        est, mask = classical.reconstruct(counts, h_min=-30, h_max=30, flags_out=flags)
        assert mask[:, :first_bright_col].mean() > 0.95, bright_b
        if bright_valid:
            assert mask[:, first_bright_col:].mean() > 0.95
        else:
            assert mask[:, first_bright_col:].mean() < 0.01
            assert (flags[:, first_bright_col:] == classical.NOISY).mean() > 0.9
        assert (np.abs(est - h)[mask] < 0.2).all()


def test_nan_and_inf_buckets_are_flagged_as_such_and_leave_the_other_tests_on():
    """A float file's NaN or Inf (a flat-field division by zero): flagged ``not_finite``
    (an Inf pixel was kept as valid), and the rest of its rows still get the noise test and
    the phase-shifter fit (one NaN made the noise model NaN: no pixel flagged noisy)."""
    rng = np.random.default_rng(5)
    h = rng.uniform(-25, 25, size=(60, 60))
    counts = _exposed(h, 3000, 100, 16, 2.0, rng).astype(np.float32) / 16  # B/σ ≈ 1.8: noise
    counts[:, :, :40] = _exposed(h, 2000, 1000, 16, 2.0, rng)[:, :, :40] / 16  # good fringes
    bad = [(3, 10, 10, np.nan), (5, 30, 20, np.inf), (0, 45, 5, -np.inf)]
    for c, y, x, v in bad:
        counts[c, y, x] = v
    flags = np.zeros(h.shape, np.uint8)
    est, mask = classical.reconstruct(counts, h_min=-30, h_max=30, flags_out=flags)
    not_finite = np.zeros(h.shape, bool)
    for _, y, x, _ in bad:
        not_finite[y, x] = True
    assert np.array_equal(flags == classical.NOT_FINITE, not_finite)
    assert (flags[:, 40:] == classical.NOISY).mean() > 0.5 and not mask[:, 40:].any()  # the rest: B/A < 2 %
    assert mask[:, :40].sum() == 60 * 40 - 3
    assert np.isfinite(classical.step_error(counts)).all()


def test_chunks_side_by_side_give_the_same_wafer(tmp_path):
    """Threads over row chunks (the command uses one per core): height, mask and flags the
    same to the bit as one chunk after another, noise included (fitted per chunk), also
    between memmaps whose pages each chunk releases while the others are in flight."""
    rng = np.random.default_rng(4)
    h = rng.uniform(-25, 25, size=(64, 48))
    counts = _exposed(h, 2000, 300, 16, 2.0, rng)
    np.save(tmp_path / "b.npy", counts)
    runs = []
    for workers, on_disk in ((1, False), (3, False), (3, True)):
        if on_disk:
            src = np.load(tmp_path / "b.npy", mmap_mode="r")
            outs = [np.lib.format.open_memmap(tmp_path / f"{n}.npy", mode="w+", dtype=t, shape=h.shape)
                    for n, t in (("h", np.float32), ("m", bool), ("f", np.uint8))]
        else:
            src, outs = counts, [np.zeros(h.shape, t) for t in (np.float32, bool, np.uint8)]
        classical.reconstruct(src, h_min=-30, h_max=30, rows_per_chunk=7, out=outs[0], mask_out=outs[1],
                              flags_out=outs[2], workers=workers)
        runs.append(tuple(np.array(o) for o in outs))
    assert 0 < runs[0][1].mean() < 1  # some pixels flagged, so the flags are compared too
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


def test_a_12_bit_cameras_clipped_counts_are_saturated_in_a_16_bit_file():
    """4095 (or, left-justified, 65520) as the wafer's largest count is where a 12-bit
    camera clipped: those pixels are flagged; a wafer that stops short of it flags none."""
    rng = np.random.default_rng(2)
    h = rng.uniform(-25, 25, size=(60, 60))
    fine = _exposed(h, 2000, 1000, 16, 2.0, rng)
    assert classical.saturation_level(fine) == 65535
    over = np.minimum(_exposed(h, 3000, 1500, 16, 2.0, rng), 4095)  # A + B = 4500: clipped by the camera
    for shift in (0, 4):  # as it is, and left-justified (× 16)
        counts = over << shift
        level = classical.saturation_level(counts)
        assert level == 4095 << shift
        flags = np.zeros(h.shape, np.uint8)
        _, mask = classical.reconstruct(counts, h_min=-30, h_max=30, flags_out=flags, saturation=level)
        clipped = (over == 4095).any(axis=0)
        assert clipped.mean() > 0.5 and np.array_equal(flags == classical.SATURATED, clipped)
    _, mask = classical.reconstruct(fine, h_min=-30, h_max=30, saturation=classical.saturation_level(fine))
    assert mask.mean() > 0.99


def test_a_phase_shifter_off_pi_over_2_is_measured_not_taken_for_noise():
    """Steps 10 % long (99° apart): the four-bucket heights carry ~107 nm of systematic
    error that no residual shows; step_error measures it (λ/4π·|(p, q)| within 15 % of the
    true RMS error at 2 % and 10 %), and the mask no longer calls every pixel noisy once it
    is taken out. A flat wafer cannot tell: NaN."""
    import math

    yy, xx = np.mgrid[0:160, 0:160]
    h = -1.4 + 27.1 * (0.6 * xx / 159 + 0.4 * yy / 159)
    lam = np.asarray(physics.DEFAULT_PSI.wavelengths)
    for err in (0.02, 0.10):
        cfg = physics.PSIConfig(steps=tuple(k * math.pi / 2 * (1 + err) for k in range(4)))
        b = physics.quantize(physics.add_noise(physics.render(h, cfg), 0.005, cfg=cfg), 16)
        pq = classical.step_error(b)
        est, mask = classical.reconstruct(b, h_min=-30, h_max=30, shifter_error=pq)
        true_nm = 1000 * float(np.sqrt(np.mean((est - h) ** 2)))
        predicted_nm = 1000 * float(np.mean(lam / (4 * math.pi) * np.hypot(pq[:, 0], pq[:, 1])))
        assert abs(predicted_nm / true_nm - 1) < 0.15, (err, predicted_nm, true_nm)
        assert mask.mean() > 0.99
    _, mask = classical.reconstruct(b, h_min=-30, h_max=30)  # 10 %: the closure alone reads it as noise
    assert mask.mean() < 0.01
    assert np.isnan(classical.step_error(physics.quantize(physics.render(np.full((64, 64), 3.0)), 16))).all()


def test_classical_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="channels: expected 16"):
        classical.reconstruct(np.zeros((12, 4, 4)))


def _smooth_height(n=64):
    spec = synth.WaferSpec(height=n, width=n, seed=1, steps=0)
    return torch.from_numpy(synth.Wafer(spec).full()).double()[None, None]


def test_physics_loss_true_height_is_a_minimum():
    h = _smooth_height()
    buckets = render_torch(h)
    h_true = h.clone().requires_grad_(True)
    loss, terms = physics_loss(h_true, buckets)
    loss.backward()
    assert float(terms["data"]) < 1e-20
    assert float(h_true.grad.abs().max()) < 1e-12
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = 0.05 * torch.sin(2 * torch.pi * xx) * torch.cos(2 * torch.pi * yy)
    noisy = 0.05 * torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    for bump in (smooth, noisy):
        worse, _ = physics_loss(h + bump.double()[None, None], buckets, smoothness=1e-3)
        assert float(worse) > 1e-4
    # the smoothness term penalises the noisy perturbation far more than the smooth one
    _, t0 = physics_loss(h, buckets, smoothness=1.0)
    _, t_smooth = physics_loss(h + smooth.double()[None, None], buckets, smoothness=1.0)
    _, t_noisy = physics_loss(h + noisy.double()[None, None], buckets, smoothness=1.0)
    assert float(t_noisy["smooth"] - t0["smooth"]) > 10 * abs(float(t_smooth["smooth"] - t0["smooth"]))


def test_torch_and_numpy_renderers_agree():
    h = _smooth_height(16)
    assert np.allclose(render_torch(h)[0].numpy(), physics.render(h[0, 0].numpy(), dtype=np.float64), atol=1e-9)


def test_cpikan_patch_refinement_lowers_the_physics_loss_and_the_error():
    from cpikan.psi.refine import refine_patch

    # a 48 × 48 patch of a 1024 × 1024 wafer: locally smooth, as patches of real images are
    spec = synth.WaferSpec(height=1024, width=1024, seed=4, steps=0, cones=0)
    h = synth.Wafer(spec).rows(500, 548)[:, 500:548]
    noisy = physics.add_noise(physics.render(h), 0.05, rng=np.random.default_rng(0))
    start, _ = classical.reconstruct(noisy)
    refined, info = refine_patch(noisy, start, steps=150)
    assert info["loss_final"] < info["loss_start"]
    rmse = lambda e: float(np.sqrt(np.mean((e - h) ** 2)))  # noqa: E731
    assert rmse(refined) < rmse(start)


def test_heights_outside_the_search_range_are_flagged_not_silently_wrong():
    """A tilted wafer from −4 to 25.7 µm searched in 0–35 µm: the pixels below 0 have no
    consistent height in the range and are flagged; every unflagged pixel is right."""
    yy, xx = np.mgrid[0:96, 0:128]
    h = (-4.0 + 29.7 * (0.6 * xx / 127 + 0.4 * yy / 95)).astype(np.float64)
    buckets = physics.quantize(physics.add_noise(physics.render(h), 0.01), 16)
    est, mask = classical.reconstruct(buckets)
    below = h < -0.3  # just below 0 the refined estimate is still right, and kept
    assert below.sum() > 100 and not mask[below].any()  # every pixel well out of range flagged
    assert mask[h > 0.05].mean() > 0.99  # and almost nothing else
    err = np.abs(est - h)[mask]
    assert err.max() < 0.05, err.max()  # no micrometre errors among the pixels it keeps
    est, mask = classical.reconstruct(buckets, h_min=-5.0, h_max=30.0)  # the right range: all valid
    assert mask.mean() > 0.99 and float(np.sqrt(np.mean((est - h)[mask] ** 2))) < 0.05


def _plain_joint_search(phi, cfg, h_min, h_max):
    """The joint search written out: every candidate height (clipped to the range) scored in float64."""
    import math

    lam = np.asarray(cfg.wavelengths, np.float64)[:, None]
    flat = phi.reshape(len(lam), -1)
    half0 = lam[0, 0] / 2
    base = (flat[0] / (2 * math.pi)) % 1.0 * half0
    best, best_cost = np.zeros_like(base), np.full(base.shape, np.inf)
    for m in range(math.floor(h_min / half0) - 1, math.ceil(h_max / half0) + 1):
        cand = np.clip(base + m * half0, h_min, h_max)
        cost = (classical.wrap(flat - 4 * math.pi * cand / lam) ** 2).sum(axis=0)
        best, best_cost = np.where(cost < best_cost, cand, best), np.minimum(cost, best_cost)
    return best, best_cost


@pytest.mark.parametrize("waves, h_min, h_max", [((0.6328, 0.6118), -3.3, 4.1), ((5.0, 5.5, 6.05), -12.3, 17.7),
                                                 ((1.55, 1.31, 0.98, 0.85, 0.63), -2.2, 2.9)])
def test_the_fast_joint_search_is_the_plain_one(waves, h_min, h_max):
    """The search scores candidates in float32 from laser 0's base misfit: the same fringe
    order as the plain float64 search everywhere (heights past both ends of the range too),
    residuals to 1e-4 rad² (the mask's threshold is 0.1)."""
    import math

    cfg = physics.PSIConfig(wavelengths=waves)
    rng = np.random.default_rng(6)
    h = rng.uniform(h_min - 1, h_max + 1, size=(32, 256))
    phi, *_ = classical.fringes(physics.add_noise(physics.render(h, cfg), 0.02, cfg=cfg, rng=rng), cfg)
    best, cost = _plain_joint_search(phi, cfg, h_min, h_max)
    res = np.empty(h.shape)
    fast = classical.height_from_phase(phi, cfg, h_min, h_max, res)
    lam = np.asarray(waves)[:, None]
    flat = phi.reshape(len(waves), -1)
    n = np.rint((4 * math.pi * best[None] / lam - flat) / (2 * math.pi))  # each laser's order, as the plain search has it
    w = 1.0 / lam**2
    plain = (w * ((flat + 2 * math.pi * n) * lam / (4 * math.pi))).sum(axis=0) / w.sum()
    assert np.array_equal(fast.ravel(), plain) and np.abs(res.ravel() - cost).max() < 1e-4


def test_a_laser_off_its_stated_wavelength_is_measured():
    """Laser 3 at 6.05 µm × (1 + ε): every pixel stays valid, yet the heights carry ~11 nm at
    ε = 0.5 %; wavelength_error reads ε back (to 0.02 %) for that laser and ~0 for the others,
    0 everywhere when the wavelengths are right, NaN when the heights span too little."""
    yy, xx = np.mgrid[0:160, 0:160] / 160
    h = -20 + 45 * (0.6 * xx + 0.4 * yy)
    rng = np.random.default_rng(7)
    for eps in (0.0, 0.005, -0.01):
        true = physics.PSIConfig(wavelengths=(5.0, 5.5, 6.05 * (1 + eps), 6.655))
        b = physics.quantize(physics.add_noise(physics.render(h, true), 0.005, cfg=true, rng=rng), 16)
        got = classical.wavelength_error(b, h_min=-30, h_max=30)
        assert np.abs(got - [0, 0, eps, 0]).max() < 2e-4, (eps, got)
    flat = physics.quantize(physics.render(np.full((64, 64), 3.0) + 0.1 * xx[:64, :64]), 16)
    assert np.isnan(classical.wavelength_error(flat, h_min=-30, h_max=30)).all()


def test_the_wafers_fringe_to_noise_ratio_is_measured():
    """One figure for the exposure: the median over pixels of the worst laser's B/σ, within
    10 % of the true ratio from 100 down to 15 (the min of four noisy estimates reads low)."""
    rng = np.random.default_rng(8)
    h = rng.uniform(-25, 25, size=(120, 120))
    for A, B, sigma in ((2000, 1000, 10.0), (2000, 300, 20.0)):
        I = physics.render(h, physics.PSIConfig(A=A, B=B)).astype(np.float64) + rng.standard_normal((16, 120, 120)) * sigma
        counts = np.clip(np.rint(I), 0, 65535).astype(np.uint16)
        assert abs(classical.fringe_snr(counts) / (B / sigma) - 1) < 0.1
