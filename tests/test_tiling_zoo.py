"""Tiled inference with models written the way public code writes them (none declares its
geometry): shift-equivariant ones tile exactly; the others are refused, naming the cause."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cpikan.tiling import predict_full, predict_tiled, probe

C = 3  # input channels of the zoo


def block(cin, cout, norm=None, k=3, dilation=1):
    layers = [nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(cout))
    elif norm == "in":
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    elif norm == "gn":
        layers.append(nn.GroupNorm(2, cout))
    return nn.Sequential(*layers, nn.ReLU())


class UNet(nn.Module):
    """depth levels of max-pooling; skips aligned by ``align`` (interpolate | pad)."""

    def __init__(self, depth=3, width=4, out=1, up="interp", align="interpolate", norm=None):
        super().__init__()
        self.depth, self.up_kind, self.align = depth, up, align
        self.down = nn.ModuleList([block(C if i == 0 else width, width, norm) for i in range(depth + 1)])
        self.ups = nn.ModuleList()
        for _ in range(depth):
            if up == "transpose":
                self.ups.append(nn.ConvTranspose2d(width, width, 2, stride=2))
            elif up == "bilinear_corners":
                self.ups.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
            else:
                self.ups.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.dec = nn.ModuleList([block(2 * width, width, norm) for _ in range(depth)])
        self.head = nn.Conv2d(width, out, 1)

    def forward(self, x):
        skips = []
        for i, d in enumerate(self.down):
            x = d(x)
            if i < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips)):
            x = up(x)
            if self.align == "interpolate":
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            else:
                dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
                x = F.pad(x, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
            x = dec(torch.cat([x, skip], 1))
        return self.head(x)


class DilatedCNN(nn.Module):
    """Odd kernels and dilations, no downsampling."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(block(C, 6, k=5), block(6, 6, k=3, dilation=3), block(6, 6, k=7, dilation=2),
                                 nn.Conv2d(6, 1, 1))

    def forward(self, x):
        return self.net(x)


class FlatteningCNN(nn.Module):
    """Reshapes activations with ``.view``, which needs contiguous (not channels_last) tensors."""

    def __init__(self):
        super().__init__()
        self.a, self.b = block(C, 4), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        return self.b(y.view(n, c * h * w).view(n, c, h, w))


def padded(model, mode):
    """``model`` with every padded convolution padding by ``mode`` instead of zeros."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.padding != (0, 0):
            m.padding_mode = mode
    return model


class Rolled(nn.Module):
    """Each pixel beside its right-hand neighbour by ``torch.roll``: local inside, wrapped at the edges."""

    def __init__(self):
        super().__init__()
        self.a, self.b = block(C, 4), nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.cat([y, torch.roll(y, -1, dims=-1)], 1))


class Fourier(nn.Module):
    """One Fourier-neural-operator layer: complex spectral weights (registered first) on the
    lowest modes of the whole image's FFT."""

    def __init__(self, modes=6):
        super().__init__()
        self.spectral = nn.Parameter(0.1 * torch.randn(4, 4, modes, modes, dtype=torch.cfloat))
        self.lift, self.out = nn.Conv2d(C, 4, 1), nn.Conv2d(4, 1, 1)

    def forward(self, x):
        h = self.lift(x)
        f, m = torch.fft.rfft2(h), self.spectral.shape[-1]
        g = torch.zeros_like(f)
        g[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", f[:, :, :m, :m], self.spectral)
        return self.out(F.gelu(h + torch.fft.irfft2(g, s=h.shape[-2:])))


class SqueezeExcite(nn.Module):
    """Channel weights from a mean over the whole image (SE blocks, written with x.mean)."""

    def __init__(self):
        super().__init__()
        self.a, self.fc, self.out = block(C, 4), nn.Linear(4, 4), nn.Conv2d(4, 1, 1)

    def forward(self, x):
        y = self.a(x)
        return self.out(y * torch.sigmoid(self.fc(y.mean((2, 3))))[:, :, None, None])


class PyramidPooling(nn.Module):
    """PSPNet's context: adaptive pooling to 2 × 2 cells, whatever the image size."""

    def __init__(self):
        super().__init__()
        self.a, self.pool = block(C, 4), nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        y = self.a(x)
        return (y + F.interpolate(self.pool(y), size=y.shape[-2:])).sum(1, keepdim=True)


class CornersByFunction(nn.Module):
    """align_corners=True through F.interpolate: no module to find by type."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(C, 1, 3, padding=1)

    def forward(self, x):
        return F.interpolate(F.avg_pool2d(self.a(x), 2), size=x.shape[-2:], mode="bilinear", align_corners=True)


class TokenAttention(nn.Module):
    """Patches of 8 px as tokens, one scaled_dot_product_attention across all of them."""

    def __init__(self):
        super().__init__()
        self.embed, self.out = nn.Conv2d(C, 4, 8, stride=8), nn.Conv2d(4, 1, 1)

    def forward(self, x):
        h = self.embed(x)
        n, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)
        t = F.scaled_dot_product_attention(t, t, t)
        return self.out(F.interpolate(t.transpose(1, 2).reshape(n, c, hh, ww), scale_factor=8))


def _build(factory, seed=0):
    torch.manual_seed(seed)
    model = factory()
    for m in model.modules():  # BatchNorm with non-trivial running statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


EQUIVARIANT = {
    "interpolate-aligned skips, nearest upsampling": (lambda: UNet(3), 8, 1),
    "pad-aligned skips, ConvTranspose, depth 4": (lambda: UNet(4, up="transpose", align="pad"), 16, 1),
    "odd kernels and dilations": (DilatedCNN, 1, 1),
    "activations reshaped with .view": (FlatteningCNN, 1, 1),
    "nearest upsampling with BatchNorm, 2 outputs": (lambda: UNet(2, out=2, norm="bn"), 4, 2),
    "reflect padding": (lambda: padded(UNet(2), "reflect"), 4, 1),  # tiles meet the edges where the image does
    "replicate padding": (lambda: padded(DilatedCNN(), "replicate"), 1, 1),
}
#: shift-equivariant, but the far side of the image wraps into its edges, which no tile holds
WRAPPING = {
    "circular padding": (lambda: padded(UNet(2), "circular"), "circular padding (down.0.0: Conv2d)"),
    "torch.roll": (Rolled, "torch.roll (wraps around)"),
}
NOT_EQUIVARIANT = {
    "InstanceNorm": (lambda: UNet(2, norm="in"), "per-image normalisation"),
    "GroupNorm": (lambda: UNet(2, norm="gn"), "per-image normalisation"),
    "align_corners=True bilinear with BatchNorm": (lambda: UNet(2, up="bilinear_corners", norm="bn"),
                                                   "align_corners=True resampling"),
}


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=(C, 333, 290)).astype(np.float32)


@pytest.mark.parametrize("name", list(EQUIVARIANT))
def test_equivariant_models_tile_exactly(name, image):
    factory, factor, channels = EQUIVARIANT[name]
    model = _build(factory)
    geo = probe(model, C)
    assert geo.equivariant and geo.factor == factor and geo.out_channels == channels, geo
    full = predict_full(model, image)
    overlap = 2 * (geo.radius + 1)
    tiled = predict_tiled(model, image, tile_size=overlap + 64, overlap=overlap, batch_size=2)
    assert tiled.shape == full.shape == (channels, 333, 290)
    assert float(np.abs(tiled - full).max() / np.abs(full).max()) <= 1e-5


def test_the_callers_model_is_left_as_it_was(image):
    model = _build(lambda: UNet(2, out=2, norm="bn"))
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    model.train()
    crop = np.ascontiguousarray(image[:, :328, :288])  # a multiple of the factor: no padding
    tiled = predict_tiled(model, crop, tile_size=96, overlap=64)
    assert model.training  # eval only while predicting
    model.eval()
    with torch.no_grad():  # the channels_last run equals the model's own forward
        plain = model(torch.from_numpy(crop)[None])[0].numpy()
    model.train()
    assert float(np.abs(tiled - plain).max() / np.abs(plain).max()) <= 1e-5
    for k, v in model.state_dict().items():  # no channels_last conversion leaks out
        assert v.stride() == before[k][1] and torch.equal(v, before[k][0]), k


@pytest.mark.parametrize("name", list(NOT_EQUIVARIANT))
def test_other_models_are_refused_with_the_cause(name, image):
    factory, cause = NOT_EQUIVARIANT[name]
    model = _build(factory)
    geo = probe(model, C)
    assert not geo.equivariant and cause in geo.cause and geo.equivariance_error > 1e-6, geo
    with pytest.raises(ValueError, match=f"not shift-equivariant .*{cause}.*mode='hann'"):
        predict_tiled(model, image, tile_size=192, overlap=128)
    # blending stays available, with tiles on the pooling grid (2 levels: 4), where the model
    # comes closest to equivariant: measured 0.5-2.6 % off whole-image inference (15-66 % with
    # tiles at any pixel)
    assert geo.factor == 4, geo
    full = predict_full(model, image)
    blended = predict_tiled(model, image, tile_size=192, overlap=128, mode="hann")
    assert np.abs(blended - full).max() <= 0.05 * np.abs(full).max()
    with pytest.warns(RuntimeWarning, match="running anyway"):
        predict_tiled(model, image, tile_size=192, overlap=128, strict=False)


@pytest.mark.parametrize("name", list(WRAPPING))
def test_models_that_wrap_the_far_side_into_the_edges_are_refused(name, image):
    factory, cause = WRAPPING[name]
    model = _build(factory)
    geo = probe(model, C)
    assert geo.equivariant and not geo.exact and cause in geo.edges and geo.edge_error > 1e-6, geo
    overlap = 2 * (geo.radius + geo.factor)
    with pytest.raises(ValueError, match=f"edges depends on the far side .*{re.escape(cause)}"):
        predict_tiled(model, image, tile_size=overlap + 64, overlap=overlap)
    with pytest.warns(RuntimeWarning, match="within .* px of the edges; running anyway"):
        tiled = predict_tiled(model, image, tile_size=overlap + 64, overlap=overlap, strict=False)
    full = predict_full(model, image)
    scale = np.abs(full).max()
    r = geo.radius + geo.factor
    inner = (slice(None), slice(r, -r), slice(r, -r))
    assert np.abs(tiled - full).max() > 1e-3 * scale  # off at the edges, as said ...
    assert np.abs(tiled[inner] - full[inner]).max() <= 1e-5 * scale  # ... and only there


class CoordChannels(nn.Module):
    """CoordConv: x and y in [-1, 1] across the image, made in forward with linspace."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(C + 2, 1, 3, padding=1)

    def forward(self, x):
        n, _, h, w = x.shape
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return self.a(torch.cat([x, yy.expand(n, 1, h, w).to(x.dtype), xx.expand(n, 1, h, w).to(x.dtype)], 1))


SEES_THE_WHOLE_IMAGE = {
    "coordinate channels": (CoordChannels, "coordinates made in forward (linspace"),
    "squeeze-and-excitation": (SqueezeExcite, "a mean over the whole image"),
    "pyramid pooling": (PyramidPooling, "adaptive pooling (pool: AdaptiveAvgPool2d"),
    "align_corners=True by function": (CornersByFunction, "align_corners=True resampling (F.interpolate)"),
    "attention across patches": (TokenAttention, "attention across the image"),
}


@pytest.mark.parametrize("name", list(SEES_THE_WHOLE_IMAGE))
def test_the_refusal_names_what_sees_the_whole_image(name, image):
    """Found by module type where there is one, else by the operators one forward pass runs."""
    factory, cause = SEES_THE_WHOLE_IMAGE[name]
    model = _build(factory)
    geo = probe(model, C)
    assert not geo.equivariant and cause in geo.cause, geo
    with pytest.raises(ValueError, match=f"not shift-equivariant .*{re.escape(cause)}"):
        predict_tiled(model, image)


def test_a_fourier_layer_is_probed_and_named(image):
    """Complex weights come first in its parameters: the probe computes in float64 and
    complex128 alike (Module.double() leaves complex weights as they are), and names the FFT."""
    model = _build(Fourier)
    geo = probe(model, C)
    assert not geo.equivariant and "Fourier layer" in geo.cause, geo
    assert model.spectral.dtype == torch.cfloat and model.lift.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="not shift-equivariant .*Fourier layer"):
        predict_tiled(model, image)
    assert predict_full(model, image).shape == (1, 333, 290)


class Unpadded(nn.Module):
    """Valid convolutions (the original U-Net's): 2 px lost on each side, unless padded first."""

    def __init__(self, pad=False):
        super().__init__()
        self.pad = pad
        self.net = nn.Sequential(nn.Conv2d(C, 4, 3), nn.ReLU(), nn.Conv2d(4, 1, 3))

    def forward(self, x):
        return self.net(F.pad(x, (2, 2, 2, 2), mode="reflect") if self.pad else x)


def test_an_unpadded_model_is_told_how_to_pad_and_then_tiles_exactly(image):
    with pytest.raises(ValueError, match=r"2 px smaller on each side \(unpadded convolutions\); have the factory "
                                         r"pad its input, e.g. F.pad\(x, \(2, 2, 2, 2\), mode='reflect'\)"):
        probe(_build(Unpadded), C)
    model = _build(lambda: Unpadded(pad=True))
    geo = probe(model, C)
    assert geo.exact and geo.radius == 2, geo
    full, tiled = predict_full(model, image), predict_tiled(model, image, tile_size=40, overlap=8)
    assert np.abs(tiled - full).max() <= 1e-5 * np.abs(full).max()


def test_a_declaration_the_probe_contradicts_is_an_error(image):
    model = _build(lambda: UNet(3))
    model.downsampling_factor = 4  # the network's stride is 8
    with pytest.raises(ValueError, match="declares downsampling_factor=4.*multiples of 8"):
        predict_tiled(model, image)
    model = _build(lambda: UNet(3))
    model.receptive_field_radius = 3
    with pytest.raises(ValueError, match="declares receptive_field_radius=3"):
        predict_tiled(model, image)


def test_check_tiling_reports_what_tiling_needs():
    import subprocess
    import sys
    from pathlib import Path

    from cpikan.tiling import check_tiling

    good = check_tiling(_build(lambda: UNet(3)), C, max_memory="30MB")
    assert good.geometry.factor == 8 and good.min_overlap >= 2 * good.geometry.radius
    assert good.tile_size % 8 == 0 and good.memory_bytes <= 30 * 2**20 and good.crop_vs_full <= 1e-5
    bad = check_tiling(_build(lambda: UNet(2, norm="in")), C, tile_size=128)
    assert not bad.geometry.equivariant and bad.crop_vs_full > 1e-4  # measured, not assumed
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "cpikan.tiling", "check", "tests.test_tiling_zoo:DilatedCNN",
                          "--channels", "3", "--max-memory", "20MB"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and "shift-equivariant      yes" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-m", "cpikan.tiling", "check", "tests.test_tiling_zoo:Nope",
                          "--channels", "3"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 2 and out.stderr.startswith("error: factory") and len(out.stderr.splitlines()) == 1


class Counts(nn.Module):
    """Public code's habit: the model scales raw 16-bit counts itself."""

    def __init__(self):
        super().__init__()
        self.net = UNet(2, up="bilinear_corners", norm="bn")

    def forward(self, x):
        return self.net(x / 65535.0)


def test_the_check_measures_seams_on_the_users_data_when_given():
    """Random normal pixels are almost nothing to a model that divides by 65535, so its seams
    look 13× smaller than on counts (measured 7.5e-4 vs 9.6e-3); a sample shows them."""
    from cpikan.tiling import check_tiling

    model = _build(Counts)
    counts = np.random.default_rng(1).integers(0, 65535, (C, 300, 300)).astype(np.uint16)
    on_random = check_tiling(model, C, tile_size=96)
    on_sample = check_tiling(model, C, tile_size=96, image=counts)
    assert on_sample.image == "sample" and on_sample.test_size == 192  # the central crop of the sample
    assert on_sample.crop_vs_full > 5 * on_random.crop_vs_full
    with pytest.raises(ValueError, match=r"sample: expected \(3, H, W\)"):
        check_tiling(model, C, tile_size=96, image=counts[:2])


class Concatenating(nn.Module):
    """Most of its memory is made by functions, not modules: a module hook never sees it."""

    def __init__(self, width=4, copies=8):
        super().__init__()
        self.copies = copies
        self.conv = nn.Conv2d(C, width, 3, padding=1)
        self.head = nn.Conv2d(width * copies, 1, 1)

    def forward(self, x):
        a = self.conv(x)
        return self.head(torch.cat([a * (i + 1) for i in range(self.copies)], 1))


def test_the_memory_estimate_counts_what_forward_makes_with_functions():
    model = _build(Concatenating)
    geo = probe(model, C)
    # modules' outputs: conv 4 + head 1 per pixel; live at the peak: 4 + 8 × 4 (the products)
    # + 32 (the concatenation) + 1
    assert geo.activations_per_pixel >= 4 + 32 + 32, geo


class Answers(nn.Module):
    """Deep supervision (a list of heads) or a dict of outputs, as many public models answer."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.a = kind, nn.Conv2d(C, 1, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return [y, y] if self.kind == "list" else {"height": y, "sigma": y}


@pytest.mark.parametrize("kind, pick", [("list", "[0]"), ("dict", "['height']")])
def test_a_model_answering_several_outputs_is_told_how_to_pick_one(kind, pick):
    with pytest.raises(ValueError, match=re.escape(f"return a module whose forward picks it (e.g. return self.net(x){pick})")):
        probe(_build(lambda: Answers(kind)), C)


class MonteCarloDropout(nn.Module):
    """Dropout left on while predicting (MC dropout for uncertainty), or noise added to the input."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.a, self.b = kind, nn.Conv2d(C, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        if self.kind == "noise":
            x = x + 0.01 * torch.randn_like(x)
        y = F.relu(self.a(x))
        return self.b(F.dropout(y, 0.2, training=True) if self.kind == "dropout" else y)


@pytest.mark.parametrize("kind, op", [("dropout", "bernoulli_"), ("noise", "randn_like")])
def test_a_model_that_answers_at_random_is_refused_naming_the_operator(kind, op, image):
    """No tiling equals a run that is never the same twice, and no replay could repeat it."""
    model = _build(lambda: MonteCarloDropout(kind))
    message = f"gives another output for the same input every run (randomness in forward ({op}: dropout left on"
    for call in (lambda: probe(model, C), lambda: predict_tiled(model, image, mode="hann")):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


class PixelAttention(nn.Module):
    """4-px patches as tokens, one MultiheadAttention across all of them: memory grows as
    the square of the image (its probe at 512² in float64 once peaked at 6.3 GB)."""

    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.out = nn.Conv2d(C, 8, 4, stride=4), nn.MultiheadAttention(8, 2, batch_first=True), \
            nn.Conv2d(8, 1, 1)

    def forward(self, x):
        h = self.embed(x)
        n, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)
        t, _ = self.attn(t, t, t)
        return self.out(F.interpolate(t.transpose(1, 2).reshape(n, c, hh, ww), scale_factor=4))


def test_memory_that_grows_as_the_images_square_is_measured_and_kept_small():
    """Measured at 64² and 128² before any large probe: the attention model is judged at 256²
    only, and its tiles are sized for the square (a CNN's activations per pixel stay flat)."""
    geo = probe(_build(PixelAttention), C)
    assert not geo.equivariant and "MultiheadAttention" in geo.cause and geo.activations_growth > 0, geo
    assert geo.tile_bytes(1024, C) > 10 * geo.tile_bytes(512, C)  # 4× the pixels, 16× the attention
    assert geo.largest_tile(C, 512 << 20) < 512
    cnn = probe(_build(lambda: UNet(3)), C)
    assert cnn.activations_growth == 0 and cnn.tile_bytes(1024, C) == 4 * cnn.tile_bytes(512, C)


class OneAtATime(nn.Module):
    """Written for one image: reshapes its activations to a batch of 1."""

    def __init__(self):
        super().__init__()
        self.a, self.b = block(C, 4), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y.reshape(1, *y.shape[1:]))


def test_a_model_written_for_one_image_gets_its_tiles_one_by_one(image):
    model = _build(OneAtATime)
    geo = probe(model, C)
    assert geo.exact and not geo.batches, geo
    tiled = predict_tiled(model, image, tile_size=64, overlap=8, batch_size=4)  # a batch of 4 would fail
    full = predict_full(model, image)
    assert np.abs(tiled - full).max() <= 1e-5 * np.abs(full).max()
    assert probe(_build(lambda: UNet(2)), C).batches


class Picky(nn.Module):
    """Takes tiles up to 300 px only (a model exported for a fixed size, say)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(C, 1, 3, padding=1)

    def forward(self, x):
        if x.shape[-1] > 300:
            raise RuntimeError("input too large for this model")
        return self.a(x)


def test_a_model_failing_on_a_batch_of_tiles_is_one_line_naming_the_batch():
    image = np.zeros((C, 400, 400), np.float32)
    with pytest.raises(ValueError, match=r"model: failed on a batch of tiles of shape \(1, 3, \d+, \d+\) "
                                         r"\(input too large for this model\)"):
        predict_tiled(_build(Picky), image, tile_size=400, overlap=8)


class Scriptable(nn.Module):
    """Exported with torch.jit.script, as models are shipped for deployment."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(C, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.bn(self.a(x)))
        z = F.interpolate(F.max_pool2d(y, 2), scale_factor=2.0, mode="nearest")
        return self.b(torch.cat([y, z], 1))


def test_a_torchscript_model_is_probed_and_tiled_exactly(image):
    """A ScriptModule takes no forward hooks: the memory measure falls back to the live tensors."""
    model = torch.jit.script(_build(Scriptable))
    geo = probe(model, C)
    assert geo.exact and geo.factor == 2 and geo.activations_per_pixel > 0, geo
    crop = np.ascontiguousarray(image[:, :150, :130])
    full = predict_full(model, crop)
    tiled = predict_tiled(model, crop, tile_size=64, overlap=2 * (geo.radius + geo.factor))
    assert np.abs(tiled - full).max() <= 1e-5 * np.abs(full).max()


class Anscombe(nn.Module):
    """Photon counts through the variance-stabilising 2√(x + 3/8) first, as imaging networks
    often start: NaN for negative input, which counts never are."""

    def __init__(self, log=False):
        super().__init__()
        self.log, self.a, self.b = log, block(C, 4), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(torch.log(x) if self.log else 2 * torch.sqrt(x + 3 / 8)))


class NotANumber(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(C, 1, 3, padding=1)

    def forward(self, x):
        return self.a(x) / 0.0 * 0.0


def test_a_model_that_takes_no_negative_input_is_probed_on_positive_pixels(image):
    """Normal pixels would give it NaN, which compares unequal to itself: it was refused as
    'randomness in forward'. Counts are never negative, so the probe measures it on |pixels|."""
    counts = np.abs(image[:, :150, :130])
    for log in (False, True):
        model = _build(lambda log=log: Anscombe(log))
        geo = probe(model, C)
        assert geo.exact and geo.positive_input and geo.factor == 1 and geo.radius == 2, geo
        full = predict_full(model, counts)
        tiled = predict_tiled(model, counts, tile_size=48, overlap=2 * (geo.radius + 1))
        assert np.isfinite(full).all() and np.abs(tiled - full).max() <= 1e-5 * np.abs(full).max()
    assert not probe(_build(lambda: UNet(2)), C).positive_input  # the others keep normal pixels


def test_a_model_with_no_finite_output_is_refused_as_such(image):
    with pytest.raises(ValueError, match=r"NotANumber returns NaN or Inf for finite input \(100 % of its output"):
        probe(_build(NotANumber), C)
    with pytest.raises(ValueError, match="returns NaN or Inf for finite input"):
        predict_tiled(_build(NotANumber), image)
