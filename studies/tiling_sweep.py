"""``tiling_overlap_sweep``: tile size × overlap × blend mode on a synthetic PSI image.

The network is the best ``psi_pretrain`` run in MLflow (by validation RMSE; linked by tags),
or a short pretrain run made first when there is none (once, before the study's workers
start, so they share it); its run ID is resolved before each trial's run starts, so it is part of the logged config and replay uses the same network.
Objectives (Pareto front): relative L2 against full-image inference (against crop mode
with large tiles when the image is too big to infer at once), seam error, seconds per
megapixel and peak memory.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cpikan.config import ConfigError, bounded, choice, validate
from cpikan.memory import peak_rss_mb, reset_peak_rss
from cpikan.psi.synth import WaferSpec
from cpikan.tiling import MODES, plan_tiles, predict_full, predict_tiled, resolve
from studies import psi_pretrain
from studies.registry import Study, register

FULL_LIMIT_MPIX = 8.0  # larger images are compared against crop mode with 1024-pixel tiles
SEAM_BAND = 8  # pixels on each side of a tile border


@dataclass
class TilingSweepConfig:
    image_size: str = "2048x2048"
    tile_size: int = bounded(512, ge=16)
    overlap: int = bounded(128, ge=0)
    mode: str = choice("crop", MODES)
    batch_size: int = bounded(2, ge=1)
    noise: float = bounded(0.01, ge=0)
    image_seed: int = bounded(5, ge=0)
    model_run_id: str = "best"  # resolved to a psi_pretrain run ID before each trial
    pretrain_steps: int = bounded(150, ge=1)  # for the short pretrain when no psi_pretrain run exists
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        validate(self)
        self.shape()
        if self.tile_size <= self.overlap:
            raise ConfigError("tile_size", f"must be > overlap, got {self.tile_size} and {self.overlap}")

    def shape(self) -> tuple[int, int]:
        try:
            h, w = (int(v) for v in self.image_size.lower().split("x"))
        except ValueError:
            raise ConfigError("image_size", f"expected HxW like 2048x2048, got {self.image_size!r}") from None
        if h < 64 or w < 64:
            raise ConfigError("image_size", f"at least 64x64, got {self.image_size}")
        return h, w

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TilingSweepConfig:
        return cls(**d)


_resolved: dict[str, str] = {}


def resolve_model(cfg: TilingSweepConfig) -> str:
    """The best psi_pretrain run, or a short new one when none exists (once per process)."""
    if cfg.model_run_id != "best":
        return cfg.model_run_id
    if "best" in _resolved:
        return _resolved["best"]
    from tracking.links import best_run
    from tracking.tracker import Tracker

    best = best_run(psi_pretrain.EXPERIMENT, "rmse_nm", "min")
    if best is None:
        full = psi_pretrain.PSIPretrainConfig()
        # the default curriculum, shortened in proportion: coarse steps per full-resolution step
        coarse = tuple(n * cfg.pretrain_steps // full.steps for n in full.curriculum_steps)
        pre = psi_pretrain.PSIPretrainConfig(steps=cfg.pretrain_steps, curriculum_steps=coarse)
        print(f"no {psi_pretrain.EXPERIMENT} run in the store: training a short one ({cfg.pretrain_steps} steps) "
              "for the sweep's network", file=sys.stderr, flush=True)
        with Tracker(psi_pretrain.EXPERIMENT, config=pre, entry_point="studies.psi_pretrain:run",
                     seed=pre.seed, run_name="short pretrain (for tiling_overlap_sweep)") as run:
            psi_pretrain.run(pre, run)
        _resolved["best"] = run.run_id
    else:
        _resolved["best"] = best.info.run_id
    return _resolved["best"]




def seam_mask(plan: Any, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    for t in plan.tiles:
        for y in (t.cy0, t.cy1):
            if 0 < y < h:
                mask[max(0, y - SEAM_BAND) : y + SEAM_BAND, t.cx0 : t.cx1] = True
        for x in (t.cx0, t.cx1):
            if 0 < x < w:
                mask[t.cy0 : t.cy1, max(0, x - SEAM_BAND) : x + SEAM_BAND] = True
    return mask


def run(config: TilingSweepConfig, ctx: Any) -> dict[str, float]:
    from tracking.links import auto_link

    h, w = config.shape()
    model_run = resolve_model(config)
    auto_link(model_run, ctx.run_id, role="pretrained", metric="rmse_nm")
    model = psi_pretrain.load_model(model_run)
    data = psi_pretrain.synthetic_dataset(WaferSpec(h, w, seed=config.image_seed, noise=config.noise))
    ctx.log_dataset(data / "buckets.npy", "image")
    image = np.load(data / "buckets.npy", mmap_mode="r")
    ref_path = data / f"reference_{model_run}.npy"
    if not ref_path.exists():  # full-image inference once per (image, network)
        if h * w / 1e6 <= FULL_LIMIT_MPIX:
            ref = predict_full(model, image)
        else:
            ref = predict_tiled(model, image, tile_size=1024, overlap=256)
        tmp = ref_path.with_suffix(f".{os.getpid()}.part.npy")  # workers may write it at once
        np.save(tmp, ref)
        tmp.replace(ref_path)
    ref = np.load(ref_path, mmap_mode="r")[0]
    tiled = {"tile_size": config.tile_size, "overlap": config.overlap, "mode": config.mode,
             "batch_size": config.batch_size}
    # one tile first: kernels' first-use set-up is neither this config's time nor its memory
    predict_tiled(model, image[:, : config.tile_size, : config.tile_size], **tiled)
    reset_peak_rss(image)
    base_rss = peak_rss_mb()
    t0 = time.perf_counter()
    pred = predict_tiled(model, image, **tiled)[0]
    seconds = time.perf_counter() - t0
    peak_mb = max(peak_rss_mb() - base_rss, 0.0)
    err = pred.astype(np.float64) - ref
    ref_rms = float(np.sqrt(np.mean(np.square(ref, dtype=np.float64))))
    plan = plan_tiles(h, w, tile_size=config.tile_size, overlap=config.overlap, mode=config.mode,
                      radius=model.receptive_field_radius, factor=model.downsampling_factor)
    band = seam_mask(plan, h, w)
    seam = float(np.sqrt(np.mean(err[band] ** 2))) if band.any() else 0.0
    rest = float(np.sqrt(np.mean(err[~band] ** 2))) if (~band).any() else 0.0
    results = {
        "rel_l2": float(np.linalg.norm(err) / np.linalg.norm(ref)),
        "max_abs_err_nm": float(np.abs(err).max() * 1000),
        "seam_rel": seam / ref_rms,
        "seam_over_interior": seam / rest if rest > 0 else (0.0 if seam == 0 else float("inf")),
        "tiles": float(len(plan.tiles)),
        "image_mpix": h * w / 1e6,
    }
    measurements = {"inference_seconds": seconds, "seconds_per_mpix": seconds / (h * w / 1e6), "peak_memory_mb": peak_mb,
                    "memory_estimate_mb": resolve(model, 16).tile_bytes(config.tile_size, 16, config.batch_size) / 2**20}
    ctx.log_results(results, measurements)
    return {**results, **measurements}


def space(trial: Any, base: TilingSweepConfig) -> TilingSweepConfig:
    base = replace(base, model_run_id=resolve_model(base))
    return replace(base, tile_size=trial.suggest_categorical("tile_size", [256, 384, 512]),
                   overlap=trial.suggest_categorical("overlap", [128, 192]),
                   mode=trial.suggest_categorical("mode", list(MODES)))


register(Study("tiling_overlap_sweep", TilingSweepConfig, TilingSweepConfig, space,
               [("rel_l2", "minimize"), ("seam_rel", "minimize"), ("seconds_per_mpix", "minimize"),
                ("peak_memory_mb", "minimize")], "studies.tiling_sweep:run", default_trials=8,
               prepare=resolve_model))  # one short pretrain, not one per worker

