"""Tiled inference over images larger than memory (docs/domain.md §4).

- :mod:`cpikan.tiling.geometry`: a model's downsampling factor, receptive-field radius, output
  channels and shift-equivariance, measured;
- :mod:`cpikan.tiling.predict`: tile plans, crop-and-stitch and blended windows, out-of-core;
- :mod:`cpikan.tiling.check`: ``check_tiling`` and ``python -m cpikan.tiling check``.
"""

from cpikan.tiling.check import TilingCheck, check_tiling
from cpikan.tiling.geometry import Geometry, probe, resolve
from cpikan.tiling.predict import (
    MODES,
    Tile,
    TilePlan,
    model_geometry,
    plan_tiles,
    predict_full,
    predict_tiled,
    release_pages,
    window,
    window_1d,
)

__all__ = ["MODES", "Geometry", "TilingCheck", "check_tiling", "Tile", "TilePlan", "model_geometry", "plan_tiles", "predict_full",
           "predict_tiled", "probe", "release_pages", "resolve", "window", "window_1d"]
