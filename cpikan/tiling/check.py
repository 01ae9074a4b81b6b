"""``check_tiling``: everything a user needs to know before tiling an image with a model.

    python -m cpikan.tiling check MODULE:FACTORY --channels 16 [--weights W.safetensors] [--sample X.npy] [--max-memory 1.5GB] [--tile 512]

prints the measured factor, radius and output channels, the shift-equivariance verdict
(with the cause when negative), the smallest exact overlap, the largest tile that fits a
memory budget, and the crop-vs-full error measured on ``--sample`` (a (C, H, W) ``.npy`` of
real data) or on random pixels. ``FACTORY`` is any
callable returning the (untrained or trained) ``nn.Module``, named by module or by file
(``mylab/unet.py:build``); ``--weights`` loads a safetensors state dict into it
(:mod:`cpikan.tiling.factory`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cpikan.arguments import ArgumentParser
from cpikan.tiling.geometry import Geometry, resolve
from cpikan.tiling.predict import predict_full, predict_tiled

UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """'1.5GB' → bytes (binary units, as memory is counted)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in UNITS:
        raise ValueError(f"max_memory: expected a size like 1.5GB or 800MB, got {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class TilingCheck:
    geometry: Geometry
    min_overlap: int  # the smallest overlap for exact crop mode (2 × radius, on the factor grid)
    tile_size: int  # the largest tile within the memory budget (or the one asked for)
    memory_bytes: int  # the plan's estimate for that tile
    crop_vs_full: float  # max |tiled − full| / max |full| on a random image
    test_size: int
    image: str = "random"  # what the error was measured on: 'random' pixels or the user's 'sample'

    def lines(self) -> list[str]:
        g = self.geometry
        verdict = "yes" if g.equivariant else f"NO: {g.cause}"
        edges = ["edges                  as the whole image's" if not g.edges else
                 f"edges                  NO: the far side wraps in ({g.edges})"] if g.equivariant else []
        return [f"downsampling factor    {g.factor}", f"receptive-field radius {g.radius} px",
                f"output channels        {g.out_channels}", f"shift-equivariant      {verdict}", *edges,
                f"smallest exact overlap {self.min_overlap} px" if g.exact else
                "smallest exact overlap none (crop mode cannot be exact: use mode='hann')" if not g.equivariant else
                f"smallest exact overlap none (tiles differ within {g.radius} px of the edges)",
                f"tile size for budget   {self.tile_size} px (≈ {self.memory_bytes / 2**20:.0f} MB per batch of 1"
                + ("; memory grows as the tile's square: something attends across pixels, and what a fused kernel "
                   "holds inside is not seen, so more)" if g.activations_growth else ")"),
                f"crop vs full, measured {self.crop_vs_full:.2e} max relative error "
                f"({self.test_size} × {self.test_size} {'random image' if self.image == 'random' else 'crop of the sample'})"]


def check_tiling(model: nn.Module, channels: int, *, max_memory: str | int | None = None,
                 tile_size: int | None = None, image: np.ndarray | None = None) -> TilingCheck:
    """Measure what tiling ``model`` over ``channels``-channel images needs and delivers.

    Args:
        model: any (N, C, H, W) → (N, K, H, W) network.
        channels: its input channels.
        max_memory: the budget for one batch of tiles (bytes or '1.5GB'); the largest tile
            whose plan estimate fits is proposed (halo costs compute: bigger is better).
        tile_size: check this tile size instead of choosing one.
        image: a (C, H, W) sample of the real data for the crop-vs-full measurement (its
            central crop); random normal pixels otherwise (their absolute values for a model
            that takes no negative input), which a model that scales its input (counts /
            65535) barely sees, so its seams look smaller than they are.
    """
    geo = resolve(model, channels)
    f = geo.factor
    overlap = 2 * (-(-geo.radius // f) * f) if geo.equivariant else 0  # edges aside, the interior is exact
    budget = parse_bytes(max_memory) if isinstance(max_memory, str) else (max_memory or 1.5 * 2**30)
    tile = tile_size
    if tile is None:
        tile = max(geo.largest_tile(channels, budget), overlap + f)
    # whole-image inference of the test image must fit the budget too (a 1000² crop through
    # a 64-feature U-Net holds ~6 GB; through attention across pixels, 34 GB), but leave room
    # for 2 × 2 tiles with their overlap
    size = min(max(2 * tile, 3 * (overlap + f)), 1024, max(geo.largest_tile(channels, budget), 2 * (overlap + f)))
    sample = "random" if image is None else "sample"
    if image is None:
        image = np.random.default_rng(0).normal(size=(channels, size, size)).astype(np.float32)
        image = np.abs(image) if geo.positive_input else image  # a model that takes no negative input
    else:
        if image.ndim != 3 or image.shape[0] != channels:
            raise ValueError(f"sample: expected ({channels}, H, W), got shape {tuple(image.shape)}")
        size = min(size, image.shape[1], image.shape[2]) // f * f
        y0, x0 = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
        image = np.asarray(image[:, y0 : y0 + size, x0 : x0 + size], np.float32)
    try:
        full = predict_full(model, image)
    except RuntimeError as exc:  # out of memory, most likely: one line, not a traceback
        raise ValueError(f"model: whole-image inference of a {size} × {size} test image failed "
                         f"({str(exc).splitlines()[0][:200]})") from None
    small = max(overlap + f, min(tile, (size + overlap) // 2))  # 2 × 2 cores, each with its halo
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the verdict above already says it
        tiled = predict_tiled(model, image, tile_size=small, overlap=min(overlap or small // 2, small - f),
                              strict=False)
    err = float(np.abs(tiled - full).max() / max(float(np.abs(full).max()), 1e-30))
    return TilingCheck(geo, overlap, tile, geo.tile_bytes(tile, channels), err, size, sample)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from cpikan.tiling.factory import build

    ap = ArgumentParser(prog="python -m cpikan.tiling check", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("factory", help="MODULE:CALLABLE or FILE.py:CALLABLE returning the model; "
                    "literal arguments may follow: 'unet.py:UNet(in_channels=16)'")
    ap.add_argument("--weights", default=None, help="a safetensors state dict to load into it first")
    ap.add_argument("--channels", type=int, required=True, help="input channels (16 for PSI buckets)")
    ap.add_argument("--max-memory", default="1.5GB", help="budget for one batch of tiles (default 1.5GB)")
    ap.add_argument("--tile", type=int, default=None, help="check this tile size instead of choosing one")
    ap.add_argument("--sample", default=None, help="a (C, H, W) .npy of real data to measure crop vs full on "
                    "(default: random pixels)")
    args = ap.parse_args(argv)
    try:
        if args.channels < 1:
            raise ValueError(f"--channels: must be ≥ 1, got {args.channels}")
        model = build(args.factory, args.weights, field="factory")
        sample = None
        if args.sample is not None:
            try:
                sample = np.load(args.sample, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ValueError(f"--sample: {args.sample}: not a readable .npy ({exc})") from None
        report = check_tiling(model, args.channels, max_memory=args.max_memory, tile_size=args.tile, image=sample)
    except ValueError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    with torch.no_grad():
        print("\n".join(report.lines()))
    return 0 if report.geometry.exact else 1
