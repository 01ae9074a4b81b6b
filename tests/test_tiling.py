"""Tiled inference: crop-and-stitch equals full-image inference; memmaps; bad input."""

import dataclasses

import numpy as np
import pytest
import torch

from cpikan.nn.unet import PlainCNN, UNet
from cpikan.tiling import model_geometry, plan_tiles, predict_full, predict_tiled


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(width=8, depth=3).eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=(16, 1024, 1000)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(unet, image):
    return predict_full(unet, image)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("tile_size, overlap", [(256, 128), (384, 160), (512, 128), (640, 200)])
def test_crop_mode_equals_full_image(unet, image, reference, tile_size, overlap):
    out = predict_tiled(unet, image, tile_size=tile_size, overlap=overlap, batch_size=3)
    assert out.shape == (1, 1024, 1000)
    assert _rel(out, reference) <= 1e-5


def test_sizes_off_the_downsampling_grid(unet):
    img = np.random.default_rng(1).normal(size=(16, 301, 517)).astype(np.float32)
    ref = predict_full(unet, img)
    assert ref.shape == (1, 301, 517)
    assert _rel(predict_tiled(unet, img, tile_size=256, overlap=128), ref) <= 1e-5


def test_second_architecture_with_another_receptive_field(image):
    torch.manual_seed(1)
    cnn = PlainCNN(dilations=(1, 3, 9, 2)).eval()
    assert model_geometry(cnn, 16) == (15, 1)
    ref = predict_full(cnn, image[:, :600, :700])
    for ts, ov in ((128, 32), (200, 64)):
        assert _rel(predict_tiled(cnn, image[:, :600, :700], tile_size=ts, overlap=ov), ref) <= 1e-5


def test_declared_radius_bounds_the_measured_one(unet):
    from cpikan.tiling import probe

    geo = probe(unet, 16)
    assert geo.equivariant and geo.factor == unet.downsampling_factor == 8 and geo.out_channels == 1
    assert 0 < geo.radius <= unet.receptive_field_radius


def test_memmap_in_and_out_any_dtype(unet, tmp_path):
    src = np.lib.format.open_memmap(tmp_path / "in.npy", mode="w+", dtype=np.uint16, shape=(16, 300, 280))
    src[:] = np.random.default_rng(2).integers(0, 60000, size=src.shape, dtype=np.uint16)
    src.flush()
    img = np.load(tmp_path / "in.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(1, 300, 280))
    scale = lambda t: t / 65535.0  # noqa: E731 — a fixed, dataset-wide normalisation
    predict_tiled(unet, img, tile_size=256, overlap=128, out=out, normalize=scale)
    out.flush()
    ref = predict_full(unet, img, normalize=scale)
    assert _rel(np.load(tmp_path / "out.npy"), ref) <= 1e-5


@pytest.mark.parametrize("mode", ["hann", "gaussian", "constant"])
def test_blending_modes_are_close_but_not_exact(unet, image, reference, mode):
    out = predict_tiled(unet, image[:, :512, :512], tile_size=256, overlap=96, mode=mode)
    ref = predict_full(unet, image[:, :512, :512])
    assert 0 < _rel(out, ref) < 0.2


def test_image_smaller_than_one_tile(unet):
    img = np.random.default_rng(3).normal(size=(16, 40, 33)).astype(np.float32)
    assert _rel(predict_tiled(unet, img, tile_size=512, overlap=128), predict_full(unet, img)) <= 1e-5


def test_plan_covers_every_pixel_once():
    plan = plan_tiles(1000, 1024, tile_size=512, overlap=128, radius=50, factor=8)
    hits = np.zeros((1000, 1024), int)
    for t in plan.tiles:
        hits[t.cy0 : min(t.cy1, 1000), t.cx0 : min(t.cx1, 1024)] += 1
        assert t.y0 % 8 == 0 and t.x0 % 8 == 0 and (t.y1 - t.y0) % 8 == 0
    assert (hits == 1).all()


def test_bad_input(unet):
    good = np.zeros((16, 64, 64), np.float32)
    with pytest.raises(ValueError, match="channels: model expects 16"):
        predict_tiled(unet, np.zeros((3, 64, 64), np.float32))
    bad = good.copy()
    bad[2, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        predict_tiled(unet, bad)
    with pytest.raises(ValueError, match="tile_size: must be > overlap"):
        predict_tiled(unet, good, tile_size=128, overlap=128)
    with pytest.raises(ValueError, match="receptive-field radius"):
        predict_tiled(unet, good, tile_size=256, overlap=32)
    with pytest.raises(ValueError, match="zero-size"):
        predict_tiled(unet, np.zeros((16, 0, 64), np.float32))
    with pytest.raises(ValueError, match="out: shape"):
        predict_tiled(unet, good, out=np.zeros((1, 60, 64), np.float32))
    with pytest.raises(ValueError, match="image: expected a \\(C, H, W\\)"):
        predict_tiled(unet, np.zeros((64, 64), np.float32))


@pytest.mark.parametrize("mode", ["hann", "gaussian", "constant"])
def test_blend_weights_normalise_exactly(mode):
    """A pixel-wise model has no seams: every blend mode must then equal full inference,
    which checks the separable (O(H + W)) weight normalisation."""
    torch.manual_seed(2)
    pointwise = PlainCNN(dilations=()).eval()
    img = np.random.default_rng(4).normal(size=(16, 530, 371)).astype(np.float32)
    out = predict_tiled(pointwise, img, tile_size=128, overlap=48, mode=mode)
    assert _rel(out, predict_full(pointwise, img)) <= 1e-5


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1, stride=2), dict(kernel_size=5, padding=4, dilation=2),
                                dict(kernel_size=4, padding="same"), dict(kernel_size=3, padding=1, padding_mode="reflect"),
                                dict(kernel_size=(3, 5), padding=(1, 2), padding_mode="circular", groups=4)])
def test_the_probes_banded_float64_convolution_is_the_convolution(kw, monkeypatch):
    """The probe convolves in float64 by bands of rows (the unfolded input of a 64-feature
    U-Net's 576² probe took 3 GB): the same numbers, to float64 rounding, for any padding,
    stride, dilation and groups; the layer's own forward comes back afterwards. Not to the bit
    on every CPU: with AVX-512 (an AMD EPYC here) the GEMM under the unfolded convolution sums
    in another order for a band's narrower matrix, 1.7e-16 … 7.3e-16 apart (2026-12-06)."""
    from cpikan.tiling import geometry

    monkeypatch.setattr(geometry, "BAND_BYTES", 1 << 14)  # a few rows per band
    conv = torch.nn.Conv2d(8, 12, **kw).double()
    x = torch.randn(2, 8, 61, 47, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = conv(x)
        with geometry._banded_convs(conv):
            banded = conv(x)
    assert "forward" not in vars(conv)
    assert float((whole - banded).abs().max()) <= 1e-14 * float(whole.abs().max())


def test_the_probe_measures_the_same_geometry_in_bands(monkeypatch):
    from cpikan.tiling import geometry

    def model():
        torch.manual_seed(0)
        return UNet(width=8, depth=3).eval()

    plain = geometry.probe(model(), 16)
    monkeypatch.setattr(geometry, "BAND_BYTES", 1 << 16)  # one row per band
    banded = geometry.probe(model(), 16)
    # every decision the same; the mismatches themselves at float64 rounding (see above)
    rounding = {"equivariance_error": 0.0, "edge_error": 0.0}
    assert dataclasses.replace(banded, **rounding) == dataclasses.replace(plain, **rounding)
    assert max(banded.equivariance_error, banded.edge_error, plain.equivariance_error, plain.edge_error) <= 1e-13
