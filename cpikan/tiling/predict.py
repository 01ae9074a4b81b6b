"""Out-of-core tiled inference: exact crop-and-stitch, or blended windows.

``predict_tiled`` reads one batch of tiles at a time from any (C, H, W) array-like (a numpy
memmap included), runs the model under ``torch.inference_mode`` and writes each tile's
contribution straight into ``out`` (which may itself be a memmap), so peak memory depends
on the tile size and batch size, never on the image.

``mode="crop"`` equals full-image inference up to float rounding for a CNN in eval mode
(docs/domain.md §4): every tile carries a halo ≥ the receptive-field radius and only its core is
written; tile origins sit on multiples of the network's downsampling factor; tiles are
clipped at the image border (no extra padding), and an image whose size is not a multiple
of the factor is zero-padded once at the bottom/right — exactly as :func:`predict_full` does
for the reference. ``hann``/``gaussian``/``constant`` blend overlapping windows (seams are
hidden, not removed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cpikan.distributed import Shard
from cpikan.memory import release_pages
from cpikan.tiling.causes import param_dtype
from cpikan.tiling.geometry import Geometry, resolve

MODES = ("crop", "hann", "gaussian", "constant")


# --------------------------------------------------------------------------- model geometry
def model_geometry(model: nn.Module, channels: int) -> tuple[int, int]:
    """(receptive-field radius, downsampling factor), measured (cpikan.tiling.geometry)."""
    geo = resolve(model, channels)
    return geo.radius, geo.factor


def _forward(model: nn.Module) -> Any:
    """``model``'s forward with its 4-D weights and its input in channels_last memory format.

    Measured 1.44× faster per production tile at 1e-7 relative difference (docs/domain.md §4,
    ``bench/tiling_variants.py``). The weights are converted copies passed through
    ``torch.func.functional_call``, so the caller's model is not changed. A model whose forward
    needs contiguous tensors (e.g. a ``.view`` across channels) falls back to its plain
    forward, which is just as exact.
    """
    last = torch.channels_last
    tensors = {name: (t.contiguous(memory_format=last) if t.dim() == 4 else t)
               for name, t in (*model.named_parameters(), *model.named_buffers())}
    plain = False

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal plain
        if not plain:
            try:
                return torch.func.functional_call(model, tensors, (x.contiguous(memory_format=last),))
            except RuntimeError:
                plain = True
        return model(x)

    return forward


# --------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Tile:
    """Input window [y0:y1, x0:x1] of the padded image, and the core it writes."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    padded: tuple[int, int]
    tile_size: int
    overlap: int
    mode: str
    tiles: tuple[Tile, ...]


def _axis_starts(length: int, core: int, factor: int) -> list[int]:
    starts = list(range(0, length, core))
    return [s - s % factor for s in starts]


def plan_tiles(
    height: int, width: int, *, tile_size: int = 512, overlap: int = 128, mode: str = "crop",
    radius: int = 0, factor: int = 1,
) -> TilePlan:
    """Tiles covering an image. ``crop``: cores of tile_size − overlap on a grid aligned to
    ``factor``, each read with a halo of overlap/2 (≥ radius) clipped at the border."""
    if mode not in MODES:
        raise ValueError(f"mode: unknown {mode!r}; allowed: {', '.join(MODES)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image: zero-size image ({height} × {width})")
    if tile_size <= overlap:
        raise ValueError(f"tile_size: must be > overlap, got tile_size={tile_size}, overlap={overlap}")
    if overlap < 0:
        raise ValueError(f"overlap: must be ≥ 0, got {overlap}")
    ph, pw = _ceil_to(height, factor), _ceil_to(width, factor)
    tiles = []
    if mode == "crop":
        halo = overlap // 2
        core = tile_size - 2 * halo
        if halo < radius:
            raise ValueError(f"overlap: crop mode needs overlap/2 ≥ the receptive-field radius {radius}, "
                             f"got overlap={overlap}; use overlap ≥ {2 * radius}")
        if core < factor:
            raise ValueError(f"tile_size: tile {tile_size} minus halo leaves a core smaller than the "
                             f"downsampling factor {factor}")
        core -= core % factor
        for y in _axis_starts(ph, core, factor):
            for x in _axis_starts(pw, core, factor):
                cy1, cx1 = min(y + core, ph), min(x + core, pw)
                y0, x0 = max(0, y - halo), max(0, x - halo)
                y0, x0 = y0 - y0 % factor, x0 - x0 % factor
                y1, x1 = min(ph, _ceil_to(cy1 + halo, factor)), min(pw, _ceil_to(cx1 + halo, factor))
                tiles.append(Tile(y0, y1, x0, x1, y, cy1, x, cx1))
    else:
        step = tile_size - overlap
        ys = sorted({min(s, max(0, ph - tile_size)) for s in range(0, max(ph - overlap, 1), step)})
        xs = sorted({min(s, max(0, pw - tile_size)) for s in range(0, max(pw - overlap, 1), step)})
        ys = [s - s % factor for s in ys]
        xs = [s - s % factor for s in xs]
        for y in ys:
            for x in xs:
                y1, x1 = min(ph, y + tile_size), min(pw, x + tile_size)
                tiles.append(Tile(y, y1, x, x1, y, y1, x, x1))
    return TilePlan(height, width, (ph, pw), tile_size, overlap, mode, tuple(tiles))


def _ceil_to(n: int, f: int) -> int:
    return int(math.ceil(n / f) * f)


# --------------------------------------------------------------------------- windows
def window_1d(kind: str, n: int) -> np.ndarray:
    """A strictly positive 1-D blending window; 2-D windows are outer products of two."""
    if kind == "constant":
        return np.ones(n, np.float64)
    if kind == "hann":
        return np.hanning(n + 2)[1:-1]
    return np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) + 1e-6  # gaussian, σ = n/8


def window(kind: str, h: int, w: int) -> np.ndarray:
    return np.outer(window_1d(kind, h), window_1d(kind, w)).astype(np.float32)


def _weight_sums(plan: TilePlan, kind: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The blend plan is a product grid of row and column spans, and every window is an outer
    product, so Σ windows = outer(Σ row windows, Σ column windows): O(H + W) memory."""
    sy, sx = np.zeros(h), np.zeros(w)
    for y0, y1 in sorted({(t.cy0, min(t.cy1, h)) for t in plan.tiles}):
        sy[y0:y1] += window_1d(kind, y1 - y0)
    for x0, x1 in sorted({(t.cx0, min(t.cx1, w)) for t in plan.tiles}):
        sx[x0:x1] += window_1d(kind, x1 - x0)
    return sy, sx


# --------------------------------------------------------------------------- inference
def _read(image: Any, t: Tile, height: int, width: int) -> np.ndarray:
    """Tile of the virtually zero-padded image (bottom/right padding only)."""
    block = np.asarray(image[:, t.y0 : min(t.y1, height), t.x0 : min(t.x1, width)])
    if block.shape[1:] != (t.y1 - t.y0, t.x1 - t.x0):
        pad = ((0, 0), (0, t.y1 - t.y0 - block.shape[1]), (0, t.x1 - t.x0 - block.shape[2]))
        block = np.pad(block, pad)
    return block


def _check_image(image: Any) -> tuple[int, int, int]:
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"image: expected a (C, H, W) array, got shape {shape}")
    c, h, w = (int(s) for s in shape)
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"image: zero-size image {tuple(shape)}")
    return c, h, w


def _batches(tiles: tuple[Tile, ...], batch_size: int) -> Iterator[list[Tile]]:
    """Group equal-shape tiles (a batch must stack), one row band of tiles at a time."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    band = None
    for t in tiles:
        if t.cy0 != band:
            yield from (g for g in groups.values() if g)
            groups, band = {}, t.cy0
        g = groups.setdefault((t.y1 - t.y0, t.x1 - t.x0), [])
        g.append(t)
        if len(g) == batch_size:
            yield g
            groups[(t.y1 - t.y0, t.x1 - t.x0)] = []
    for g in groups.values():
        if g:
            yield g


def predict_tiled(
    model: nn.Module,
    image: Any,
    *,
    tile_size: int = 512,
    overlap: int = 128,
    mode: str = "crop",
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    out: np.ndarray | None = None,
    out_channels: int | None = None,
    normalize: Any = None,
    check_finite: bool = True,
    progress: bool = False,
    strict: bool = True,
    shard: Shard | None = None,
) -> np.ndarray:
    """Run ``model`` over ``image`` (C, H, W) tile by tile; returns ``out`` (K, H, W) float32.

    Args:
        model: any (N, C, H, W) → (N, K, H, W) network; its geometry is measured
            (:mod:`cpikan.tiling.geometry`), declarations are checked against it.
        image: (C, H, W) array-like, a numpy memmap included (read a batch of tiles at a time).
        tile_size, overlap: in pixels; crop mode needs overlap/2 ≥ the receptive-field radius.
        mode: ``crop`` (exact for a shift-equivariant model) or a blending window.
        out: where to write (e.g. a memmap); (K, H, W) float32.
        normalize: applied to each float32 tile before the model (e.g. the dataset's fixed
            intensity scaling — never per-tile statistics).
        strict: crop mode refuses a model that is not shift-equivariant (no crop-and-stitch
            can equal its full-image output); ``False`` runs anyway and warns with the
            mismatch the probe measured.
        shard: compute only this process's row bands of tiles (``cpikan.distributed``; crop
            mode only: the cores are disjoint, so processes writing one memmap never overlap).
    """
    c, h, w = _check_image(image)
    expected = getattr(model, "in_channels", None)
    if expected is not None and c != expected:
        raise ValueError(f"channels: model expects {expected} input channels, image has {c}")
    geo = resolve(model, c)
    radius = geo.radius
    if geo.edges or (mode == "crop" and not geo.equivariant):
        _refuse_or_warn(model, geo, strict and mode == "crop")
        radius = min(radius, overlap // 2)  # inexact anyway (warned): the halo cannot make it exact
    plan = plan_tiles(h, w, tile_size=tile_size, overlap=overlap, mode=mode, radius=radius, factor=geo.factor)
    tiles = plan.tiles
    if shard is not None and shard.world > 1:
        if mode != "crop":
            raise ValueError(f"shard: mode {mode!r} adds overlapping windows, which processes cannot share; "
                             "split only crop mode across processes")
        mine = set(shard.take(sorted({t.cy0 for t in tiles})))
        tiles = tuple(t for t in tiles if t.cy0 in mine)
    k = out_channels or geo.out_channels
    if out is None:
        out = np.zeros((k, h, w), np.float32)
    elif tuple(out.shape) != (k, h, w):
        raise ValueError(f"out: shape {tuple(out.shape)} does not match the output (K, H, W) = {(k, h, w)}")
    elif mode != "crop":
        out[...] = 0
    device = torch.device(device)
    dtype = param_dtype(model)
    win_cache: dict[tuple[int, int], np.ndarray] = {}
    was_training = model.training
    model.eval()
    forward = _forward(model)
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", disable=not progress, mininterval=2)
    try:
        with torch.inference_mode():
            for group in _batches(tiles, batch_size if geo.batches else 1):
                # memmaps: drop the pages the last batch touched (a row band of a 16-channel
                # image is ~200 MB at 7000 columns); re-reads come from the page cache
                release_pages(image)
                release_pages(out)
                arrays = [_read(image, t, h, w) for t in group]
                batch = torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False))
                if check_finite and not torch.isfinite(batch).all():
                    raise ValueError("image: contains NaN or Inf pixels")
                if normalize is not None:
                    batch = normalize(batch)
                try:
                    pred = forward(batch.to(device=device, dtype=dtype)).float().cpu().numpy()
                except RuntimeError as exc:  # the user's model, out of memory or a size it rejects: one line
                    raise ValueError(f"model: failed on a batch of tiles of shape {tuple(batch.shape)} "
                                     f"({str(exc).splitlines()[0][:300]})") from None
                for t, p in zip(group, pred):
                    cy1, cx1 = min(t.cy1, h), min(t.cx1, w)
                    if cy1 <= t.cy0 or cx1 <= t.cx0:
                        continue
                    sy, sx = t.cy0 - t.y0, t.cx0 - t.x0
                    core = p[:, sy : sy + cy1 - t.cy0, sx : sx + cx1 - t.cx0]
                    if mode == "crop":
                        out[:, t.cy0 : cy1, t.cx0 : cx1] = core
                    else:
                        key = (cy1 - t.cy0, cx1 - t.cx0)
                        wnd = win_cache.setdefault(key, window(mode, *key))
                        out[:, t.cy0 : cy1, t.cx0 : cx1] += core * wnd
                bar.update(len(group))
        if mode != "crop":
            sy, sx = _weight_sums(plan, mode, h, w)
            for r0 in range(0, h, 1024):  # row blocks: out may be a memmap
                out[:, r0 : r0 + 1024] /= np.outer(sy[r0 : r0 + 1024], sx).astype(np.float32)[None]
        release_pages(out)
    finally:
        bar.close()
        model.train(was_training)
    return out


def _refuse_or_warn(model: nn.Module, geo: Geometry, strict: bool) -> None:
    """Refuse (``strict``) or warn: tiles cannot equal full-image inference for this model."""
    import warnings

    name = type(model).__name__
    if geo.edges:  # blending cannot help: no tile holds the far side
        message = (f"{name}'s output at the image's edges depends on the far side of the image (measured "
                   f"mismatch {geo.edge_error:.1e} of its output range; suspected: {geo.edges}), so tiles cannot "
                   f"equal full-image inference within {geo.radius} px of the edges")
        if strict:
            raise ValueError("crop mode: " + message + ": strict=False (or a blending mode) runs anyway")
        warnings.warn(message + "; running anyway", RuntimeWarning, stacklevel=3)
        return
    message = (f"crop mode: {name} is not shift-equivariant (measured mismatch "
               f"{geo.equivariance_error:.1e} of its output range for every shift up to 64 pixels; suspected: "
               f"{geo.cause}), so tiles cannot equal full-image inference")
    if strict:
        raise ValueError(message + ": use a blending mode (mode='hann') or strict=False to run anyway")
    warnings.warn(message + "; running anyway (strict=False): expect seams of about that size",
                  RuntimeWarning, stacklevel=3)


def predict_full(model: nn.Module, image: Any, device: str | torch.device = "cpu",
                 normalize: Any = None) -> np.ndarray:
    """Whole-image inference, zero-padded to the downsampling factor exactly as the tiles are."""
    c, h, w = _check_image(image)
    _, factor = model_geometry(model, c)
    x = _read(image, Tile(0, _ceil_to(h, factor), 0, _ceil_to(w, factor), 0, 0, 0, 0), h, w)
    batch = torch.from_numpy(np.asarray(x, np.float32))[None]
    if normalize is not None:
        batch = normalize(batch)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            y = _forward(model)(batch.to(device=device, dtype=param_dtype(model))).float().cpu().numpy()[0]
    finally:
        model.train(was_training)
    return y[:, :h, :w]
