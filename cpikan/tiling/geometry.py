"""A model's tiling geometry, measured rather than guessed (docs/domain.md §4).

- **Downsampling factor**: the smallest shift s ∈ {1, 2, 4, …, 64} such that shifting the
  input by s pixels shifts the output by s pixels (away from the borders). A network with
  total stride 8 is equivariant to shifts by 8 but not by 1, 2 or 4, whatever it does to
  accept odd sizes (``F.interpolate(size=…)``, ``F.pad`` on its skips).
- **Shift-equivariance**: when no such shift exists, no crop-and-stitch can equal
  full-image inference (per-image normalisation, ``align_corners=True`` resampling,
  position-dependent layers); :func:`probe` says so with the suspected cause.
- **Receptive-field radius**: the reach of the input gradient of an f × f block of output
  pixels (every stride phase at once), over a few random inputs so dead ReLUs hide nothing.
- **Edges**: a tile that ends where the image ends must see what the whole image sees
  there. Zero, reflect or replicate padding do; circular padding, ``torch.roll`` or an FFT
  wrap the far side of the image into its edges, which no tile holds (:func:`_edge_error`).
- **Input domain**: random normal pixels, or their absolute values for a model that gives
  NaN or Inf on negative input (``sqrt`` or ``log`` of intensities, an Anscombe transform):
  counts are never negative. A model with no finite output on either is refused as such.
- **Output channels**: from the probe's output.
- **Activation elements per pixel**: the larger of every module's outputs summed over one
  forward pass and the peak of live tensors during it, per input pixel, so a tile size can
  be chosen from a memory budget for *this* model.

A model may declare ``downsampling_factor`` and ``receptive_field_radius``; a declaration
the measurement contradicts (a factor that is not a multiple of the measured one, a radius
below the measured one) is an error, never silently used.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cpikan.tiling.causes import edge_cause, param_dtype, suspected_cause

SHIFTS = (1, 2, 4, 8, 16, 32, 64)
#: max |difference| / the output's range still counted as equal: the probe runs a float64 copy of
#: the model, so rounding is ~1e-15 and even a faint stride effect (an untrained U-Net's
#: deepest level contributes ~1e-6) stands out
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-6}


@dataclass(frozen=True)
class Geometry:
    factor: int  # the stride tiles start on: shift-equivariant at it (or, if none is, closest to it)
    radius: int
    out_channels: int
    equivariant: bool
    cause: str = ""  # why the model is not shift-equivariant ('' when it is)
    equivariance_error: float = 0.0  # the probe's best relative mismatch over the shifts
    activations_per_pixel: float = 0.0  # Σ module output elements / input pixels (one forward)
    edges: str = ""  # why the output at the image's edges depends on its far side ('' when it does not)
    edge_error: float = 0.0  # the edge test's relative mismatch
    # activation elements per pixel *per pixel* more: 0 for a CNN, > 0 when memory grows as
    # the square of the image (attention across pixels); per pixel = a + growth · pixels
    activations_growth: float = 0.0
    batches: bool = True  # whether several tiles may go through in one batch (each answered as if alone)
    positive_input: bool = False  # probed on |normal| pixels: the model has no finite output for negative input

    @property
    def exact(self) -> bool:
        """Whether crop-and-stitch tiles can equal whole-image inference."""
        return self.equivariant and not self.edges

    def tile_bytes(self, tile: int, channels: int, batch_size: int = 1, bytes_per: int = 4) -> int:
        """Upper bound on the bytes one batch of ``tile`` × ``tile`` tiles holds: the input,
        every activation, the output and its blending buffers."""
        per_pixel = channels + self.activations_per_pixel + self.activations_growth * tile * tile + 3 * self.out_channels
        return int(batch_size * tile * tile * per_pixel * bytes_per)

    def largest_tile(self, channels: int, budget: int, limit: int = 8192) -> int:
        """The largest tile (a multiple of the factor) whose batch of one fits ``budget``
        bytes: the halo costs compute ((tile / core)² extra), so bigger is faster."""
        tile = self.factor
        for cand in range(self.factor, limit + 1, self.factor):
            if self.tile_bytes(cand, channels) > budget:
                break
            tile = cand
        return tile


def _pixels(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, positive: bool) -> torch.Tensor:
    """The probe's random input: normal pixels, or their absolute values (see :func:`_input_domain`)."""
    x = torch.randn(*shape, generator=gen)
    return (x.abs() if positive else x).to(dtype)


def _input_domain(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model must be probed on positive pixels: True when its output on normal
    pixels ``x`` is not finite but on their absolute values is (``sqrt``, ``log`` of
    intensities); ValueError when neither is, since no measure of it means anything."""
    with torch.no_grad():
        for positive in (False, True):
            out = _forward(model, x.abs() if positive else x)
            if bool(torch.isfinite(out).all()):
                return positive
    bad = float((~torch.isfinite(out)).float().mean())
    raise ValueError(f"model: {type(model).__name__} returns NaN or Inf for finite input ({100 * bad:.3g} % of its "
                     "output on random positive pixels): fix the model (a division by zero, log of 0?) before tiling it")


def _answers_each_alone(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether a batch of two images gets each the output it gets alone (a forward that
    reshapes to one image, ``x.view(1, …)``, fails or mixes them): else tiles go one by one."""
    pair = torch.cat([x, x.flip(-1)])
    try:
        with torch.no_grad():
            both = _forward(model, pair)
            alone = torch.cat([_forward(model, pair[:1]), _forward(model, pair[1:])])
    except (RuntimeError, ValueError):
        return False
    scale = float(alone.abs().max()) or 1.0
    return both.shape == alone.shape and float((both - alone).abs().max()) <= 1e-10 * scale


def _refuse_randomness(model: nn.Module, channels: int, x: torch.Tensor) -> None:
    """ValueError when the model answers the same input differently twice (dropout left on,
    sampled noise): no tiling can equal a whole-image run of it, and no run of it repeats."""
    with torch.no_grad():
        if torch.equal(_forward(model, x), _forward(model, x)):
            return
    cause = suspected_cause(model, channels)
    cause = cause if cause.startswith("randomness") else "randomness in forward"
    raise ValueError(f"model: {type(model).__name__} gives another output for the same input every run ({cause}): "
                     "tiles cannot equal a whole-image run and no run could be repeated: switch it off for "
                     "prediction, e.g. F.dropout(x, p, training=self.training)")


def _copy_as(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` computing in ``dtype``: real floating tensors cast to it, complex
    ones to its complex twin (``Module.to(float64)`` would drop a Fourier layer's imaginary
    parts); the model itself when it cannot be copied."""
    try:
        model = copy.deepcopy(model)
    except (RuntimeError, TypeError):  # a model that cannot be copied: probe it as it is
        return model
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    with torch.no_grad():
        for m in model.modules():
            for p in m.parameters(recurse=False):
                if p.is_floating_point() or p.is_complex():
                    p.data = p.data.to(complex_dtype if p.is_complex() else dtype)
            for name, b in m.named_buffers(recurse=False):
                if b is not None and (b.is_floating_point() or b.is_complex()):
                    setattr(m, name, b.to(complex_dtype if b.is_complex() else dtype))
    return model


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor):  # (main, aux), {"out": …}: which is the height is the user's to say
        pick = f"[{next(iter(out))!r}]" if isinstance(out, dict) and out else "[0]"
        raise ValueError(f"model: returns {describe_output(out)}; tiled inference needs one (N, K, H, W) tensor: "
                         f"have the factory return a module whose forward picks it (e.g. return self.net(x){pick})")
    if out.dim() != 4 or out.shape[-2:] != x.shape[-2:]:
        hint = ""
        dy, dx = (x.shape[-2] - out.shape[-2], x.shape[-1] - out.shape[-1]) if out.dim() == 4 else (0, 0)
        if dy == dx and dy > 0 and dy % 2 == 0:  # valid convolutions: every pixel needs its neighbours
            m = dy // 2
            hint = (f": its output is {m} px smaller on each side (unpadded convolutions); have the factory pad "
                    f"its input, e.g. F.pad(x, ({m}, {m}, {m}, {m}), mode='reflect') as the original U-Net's "
                    "overlap-tile does, and tiles will equal that whole-image output")
        raise ValueError(f"model: maps (N, C, {x.shape[-2]}, {x.shape[-1]}) to {tuple(out.shape)}; tiled "
                         f"inference needs an output of the input's height and width (N, K, H, W){hint}")
    return out


def describe_output(out: object) -> str:
    """A model's non-tensor output, briefly: 'a tuple of 2 ((1, 1, 64, 64), (1, 1, 64, 64))'."""
    def shape(v: object) -> str:
        return str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__

    if isinstance(out, dict):
        return f"a dict ({', '.join(f'{k!r}: {shape(v)}' for k, v in list(out.items())[:4])})"
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {len(out)} ({', '.join(shape(v) for v in out[:4])})"
    return f"a {type(out).__name__}"


def _shift_error(model: nn.Module, big: torch.Tensor, size: int, shift: int, base: torch.Tensor) -> float:
    """Mismatch between the output of a crop shifted by ``shift`` and the shifted output, on
    the central half (away from both crops' borders), relative to the output's range: a
    model whose output sits on a large offset (inputs scaled by 1/65535, say) would
    otherwise look equivariant to a part in 1e8 and still give 4 % seams."""
    moved = _forward(model, big[:, :, shift : shift + size, shift : shift + size])
    m = size // 4
    a = base[:, :, m + shift : size - m, m + shift : size - m]
    b = moved[:, :, m : size - m - shift, m : size - m - shift]
    scale = float(base.amax() - base.amin()) or 1.0
    return float((a - b).abs().max()) / scale


def _edge_error(model: nn.Module, image: torch.Tensor, base: torch.Tensor, margin: int) -> float:
    """How far the output near an image's edges moves when the image ends half way down and
    across, or begins there (the top-left and bottom-right tiles of a 2 × 2 split), relative
    to the output's range, ``margin`` px (radius + factor) clear of the split. Tiles meet
    the image's edges where it does, so padding that repeats the edge (zeros, reflect,
    replicate) gives 0; anything that wraps the far side in does not."""
    size = image.shape[-1]
    half = size // 2
    top = _forward(model, image[:, :, :half, :half])
    bottom = _forward(model, image[:, :, half:, half:])
    scale = float(base.amax() - base.amin()) or 1.0
    return max(float((top - base[:, :, :half, :half])[:, :, : half - margin, : half - margin].abs().max()),
               float((bottom - base[:, :, half:, half:])[:, :, margin:, margin:].abs().max())) / scale


#: the most bytes a float64 convolution's unfolded input may take in the probe (see _banded_convs)
BAND_BYTES = 64 << 20


def _banded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` computed in bands of output rows. CPU convolutions in float64 run without
    oneDNN, unfolding the input first (C·k² values per pixel: 3 GB for a 128-channel layer of
    a 576² probe); each output pixel is still the same sum over its own window, so the result
    is the same to float64 rounding (a GEMM may sum in another order for a band's narrower
    matrix: ~1e-16 apart on AVX-512), in a band's worth of memory."""
    (kh, kw), (sh, _), (dh, _) = conv.kernel_size, conv.stride, conv.dilation
    n, c, h, w = x.shape
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    w_out = (w + left + right - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
    h_out = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    rows = max(1, BAND_BYTES // max(1, n * c * kh * kw * w_out * x.element_size()))
    if rows >= h_out:
        return conv._conv_forward(x, conv.weight, conv.bias)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = nn.functional.pad(x, (left, right, top, bottom), mode=mode)
    bands = []
    for o0 in range(0, h_out, rows):
        o1 = min(h_out, o0 + rows)
        band = xp[:, :, o0 * sh : (o1 - 1) * sh + dh * (kh - 1) + 1]
        bands.append(nn.functional.conv2d(band, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups))
    return torch.cat(bands, dim=2)


@contextlib.contextmanager
def _banded_convs(model: nn.Module) -> Iterator[None]:
    """While inside, the float64 ``nn.Conv2d`` layers of ``model`` convolve in bands (:func:`_banded`)."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and m.weight.dtype == torch.float64]
    for m in convs:
        m.forward = _banded.__get__(m)  # the instance's own forward: nn.Module.__call__ looks there first
    try:
        yield
    finally:
        for m in convs:
            del m.forward


def _radius(model: nn.Module, channels: int, size: int, factor: int, probes: int = 2, positive: bool = False) -> int:
    """How far an output block's gradient reaches into the input. Only where it is nonzero
    matters, so a float32 copy does (CPU convolutions in float64 run without oneDNN: a MONAI
    BasicUNet's 512² probe took 16.5 s and 2.9 GB that way). At 256² first when ``size`` is
    larger: the backward pass holds every activation (2.3 GB for a 64-feature U-Net at 512²,
    1.2 at 256²), and a reach inside 256² is the same reach."""
    if size > 256:
        reach, touched = _reach(model, channels, 256, factor, probes, positive)
        if not touched:
            return reach
    return _reach(model, channels, size, factor, probes, positive)[0]


def _reach(model: nn.Module, channels: int, size: int, factor: int, probes: int,
           positive: bool = False) -> tuple[int, bool]:
    """(radius, whether the reach touched the input's border: then it may go further)."""
    model = _copy_as(model, torch.float32)
    dtype = param_dtype(model)
    reach = torch.zeros(size, size)
    gen = torch.Generator().manual_seed(1)
    c = size // 2 - (size // 2) % factor
    with torch.enable_grad():  # callers may be inside no_grad
        for _ in range(probes):
            x = _pixels((1, channels, size, size), gen, dtype, positive).requires_grad_(True)
            _forward(model, x)[0, :, c : c + factor, c : c + factor].sum().backward()
            reach += x.grad[0].abs().sum(0).float()
    nz = (reach > 0).nonzero()
    if not len(nz):
        return 0, False
    lo, hi = nz.min(0).values, nz.max(0).values
    return int(max(c - lo.min(), hi.max() - (c + factor - 1))), bool(lo.min() == 0 or hi.max() == size - 1)


class _PeakLiveBytes(TorchDispatchMode):
    """The most bytes of tensors alive at once while the mode is on (each storage once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self.seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key and key not in self.seen:  # a view or an in-place result: counted already
                    n = t.untyped_storage().nbytes()
                    self.seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, n)
        return out


def _activations(model: nn.Module, channels: int, size: int = 64) -> tuple[float, float]:
    """(a, growth): activation elements per input pixel, a + growth · pixels, from one
    forward pass at ``size``² and one at twice the side. A CNN's grow with the image (growth 0); attention
    across pixels holds a pixels × pixels matrix, whose share per pixel grows with the image
    (a 64² → 128² ratio of 4): measured here, small, before any large probe runs it (a
    two-head attention layer's probe at 512² in float64 peaked at 6.3 GB)."""
    small, large = (_activations_per_pixel(model, channels, s) for s in (size, 2 * size))
    if large <= 1.25 * small:  # borders and rounding, not the image's square
        return small, 0.0
    growth = (large - small) / (3 * size * size)  # per pixel, per pixel more: 4·P − P
    return max(small - growth * size * size, 0.0), growth


def _activations_per_pixel(model: nn.Module, channels: int, size: int) -> float:
    """Float32 activations one forward pass at ``size``² holds per input pixel: the larger
    of two measures, since each misses something. Σ of every module's outputs misses what
    ``forward`` computes with functions (``torch.cat``, ``F.interpolate``, arithmetic: a
    U-Net written that way measured 0.65× its real peak); the peak of live tensors
    (``TorchDispatchMode``) misses the allocator's and the kernels' own workspace."""
    total = 0

    def count(_m: nn.Module, _inp: object, out: object) -> None:
        nonlocal total
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                total += t.numel()

    x = torch.zeros(1, channels, size, size, dtype=param_dtype(model))
    leaves = [m for m in model.modules() if not list(m.children())]  # containers would count twice
    handles = []
    for m in leaves:
        try:
            handles.append(m.register_forward_hook(count))
        except RuntimeError:  # a TorchScript module takes no hooks: the peak of live tensors measures it
            pass
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    peak = 0.0
    try:
        with torch.inference_mode(), _PeakLiveBytes() as live:
            model(x)
        peak = live.peak / x.element_size()
    except Exception:  # noqa: BLE001 — a model the dispatch mode cannot follow keeps the first measure
        pass
    return max(total, peak) / (size * size)


_cache: weakref.WeakKeyDictionary[nn.Module, dict[int, Geometry]] = weakref.WeakKeyDictionary()


def probe(model: nn.Module, channels: int) -> Geometry:
    """Measure the model's geometry in eval mode (cached per model and channel count)."""
    known = _cache.setdefault(model, {})
    if channels in known:
        return known[channels]
    model = _copy_as(model, torch.float64)  # rounding far below any model effect
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    dtype = param_dtype(model)
    tolerance = TOLERANCE.get(dtype, 1e-3)
    best, factor, nearest, radius, size = float("inf"), 0, 1, 0, 256
    try:
        small = torch.randn(1, channels, 64, 64, generator=gen).to(dtype)
        positive = _input_domain(model, small)
        small = small.abs() if positive else small
        _refuse_randomness(model, channels, small)
        batches = _answers_each_alone(model, small)
        activations, growth = _activations(model, channels)
        # a shift test compares the central half: a reach past a quarter of 256 px would only
        # show the borders there, so it goes straight to 512 (the reach of a 64-px block covers
        # every factor's phases; float32 and 256² make it cheap: 1.5 s for a 64-feature U-Net).
        # Memory that grows as the image's square sees the whole image: 256² is enough to say so
        reach, touched = _reach(model, channels, 256, SHIFTS[-1], probes=1, positive=positive)
        sizes = (256,) if growth else (256, 512) if reach < 64 and not touched else (512,)
        with torch.no_grad():
            for size in sizes:
                big = _pixels((1, channels, size + SHIFTS[-1], size + SHIFTS[-1]), gen, dtype, positive)
                errors = {}
                with _banded_convs(model):
                    base = _forward(model, big[:, :, :size, :size])
                    for s in SHIFTS:
                        errors[s] = err = _shift_error(model, big, size, s, base)
                        best = min(best, err)
                        if err <= tolerance:
                            factor = s
                            break
                if factor:
                    break
                # not equivariant here: tiles would start on the grid where it comes closest (a
                # pooled model's own stride); the larger probe can only tell more when the
                # borders reach the compared centre (a small U-Net: 13 s → 4 s)
                nearest = min(s for s, e in errors.items() if e <= 2 * min(errors.values()))
                radius = _radius(model, channels, size, nearest, positive=positive)
                if radius < size // 4:
                    break
        out_channels = int(base.shape[1])
        edge_error = 0.0
        if factor:
            radius = _radius(model, channels, size, factor, positive=positive)
            margin = radius + factor
            if margin >= size // 2:  # the corner tiles need room beside the halo: a larger image
                size = -(-4 * margin // SHIFTS[-1]) * SHIFTS[-1]
                big = _pixels((1, channels, size, size), gen, dtype, positive)
                with torch.no_grad(), _banded_convs(model):
                    base = _forward(model, big)
            with torch.no_grad(), _banded_convs(model):
                edge_error = _edge_error(model, big[:, :, :size, :size], base, margin)
    finally:
        model.train(was_training)
    edges = edge_cause(model, channels) if edge_error > tolerance else ""
    if factor:
        geo = Geometry(factor, radius, out_channels, True, "", best, activations, edges, edge_error, growth, batches,
                       positive)
    else:
        geo = Geometry(nearest, radius, out_channels, False, suspected_cause(model, channels), best, activations,
                       activations_growth=growth, batches=batches, positive_input=positive)
    known[channels] = geo
    return geo


def resolve(model: nn.Module, channels: int) -> Geometry:
    """The measured geometry, with the model's own declarations where they are consistent
    with it (a declared factor may be a multiple of the measured one, a declared radius may
    be larger); a contradiction raises ValueError naming both values."""
    geo = probe(model, channels)
    factor = getattr(model, "downsampling_factor", None)
    radius = getattr(model, "receptive_field_radius", None)
    name = type(model).__name__
    if geo.equivariant and factor is not None and int(factor) % geo.factor:
        raise ValueError(f"model: {name} declares downsampling_factor={factor}, but it is shift-equivariant "
                         f"only at multiples of {geo.factor} (measured): fix or remove the declaration")
    if radius is not None and int(radius) < geo.radius:
        raise ValueError(f"model: {name} declares receptive_field_radius={radius}, but its output depends on "
                         f"pixels {geo.radius} away (measured): fix or remove the declaration")
    return dataclasses.replace(geo, factor=int(factor) if geo.equivariant and factor is not None else geo.factor,
                               radius=int(radius) if radius is not None else geo.radius)
