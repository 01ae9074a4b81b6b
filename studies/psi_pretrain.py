"""``psi_pretrain``: train the PSI reconstruction network and log it as an MLflow model."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cpikan.config import ConfigError, added, bounded, choice, validate
from cpikan.psi.curriculum import CurriculumConfig, level_patch, train_levels
from cpikan.psi.data import open_memmap_dataset
from cpikan.psi.model import PSINet
from cpikan.psi.physics import DEFAULT_PSI, PSIConfig
from cpikan.psi.synth import WaferSpec, write_dataset
from cpikan.psi.train import LOSSES, PSITask, PSITrainSpec
from cpikan.train import TrainConfig
from studies.registry import Study, register
from tracking import hashing, models
from tracking.models import log_model
from tracking.store import mlruns_dir

EXPERIMENT = "studies/psi_pretrain"


@dataclass
class PSIPretrainConfig:
    steps: int = bounded(300, ge=1)
    lr: float = bounded(1e-3, gt=0)
    width: int = bounded(8, ge=1)
    depth: int = bounded(3, ge=1, le=8)
    patch: int = bounded(64, ge=1)
    batch_size: int = bounded(8, ge=1)
    loss: str = choice("supervised", LOSSES)
    noise_levels: tuple[float, ...] = (0.0, 0.01, 0.05)
    train_size: int = bounded(1024, ge=1)
    val_size: int = bounded(256, ge=1)
    data_seed: int = bounded(11, ge=0)
    seed: int = bounded(0, ge=0)
    #: coarse levels before the full-resolution ``steps`` (cpikan.psi.curriculum): downsampling
    #: factors, coarse to fine, and Adam steps at each; () trains at full resolution only (as
    #: runs made before the curriculum did)
    curriculum_factors: tuple[int, ...] = added((4, 2), before=())
    curriculum_steps: tuple[int, ...] = added((400, 200), before=())
    #: the lab's lasers (µm, laser order): the model reconstructs wafers measured with these only
    wavelengths: tuple[float, ...] = DEFAULT_PSI.wavelengths

    def __post_init__(self) -> None:
        validate(self)
        self.noise_levels = tuple(float(v) for v in self.noise_levels)
        self.wavelengths = tuple(float(v) for v in self.wavelengths)
        if not self.wavelengths or any(not v > 0 for v in self.wavelengths):
            raise ConfigError("wavelengths", f"positive numbers in µm, one per laser; got {self.wavelengths}")
        try:
            self.schedule()
        except ConfigError as e:
            raise ConfigError(f"curriculum_{e.field}", e.message) from None
        self.curriculum_factors = tuple(int(f) for f in self.curriculum_factors)
        self.curriculum_steps = tuple(int(n) for n in self.curriculum_steps)

    def schedule(self) -> CurriculumConfig:
        """The levels that train (a coarse level with 0 steps is left out)."""
        full = CurriculumConfig((*self.curriculum_factors, 1), (*self.curriculum_steps, self.steps))
        keep = [i for i, n in enumerate(full.steps) if n]
        return CurriculumConfig(tuple(full.factors[i] for i in keep), tuple(full.steps[i] for i in keep))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PSIPretrainConfig:
        return cls(**d)


def synthetic_dataset(spec: WaferSpec, psi: PSIConfig = DEFAULT_PSI) -> Path:
    """A wafer written once under mlruns/data/psi/<spec hash>/ and reused afterwards."""
    key = asdict(spec) if psi == DEFAULT_PSI else {**asdict(spec), "psi": asdict(psi)}  # old caches stay valid
    root = mlruns_dir() / "data" / "psi" / hashing.config_hash(key)[:16]
    if not (root / "buckets.npy").exists():
        write_dataset(spec, root, psi, progress=False)
    return root


def psi_of(cfg: PSIPretrainConfig) -> PSIConfig:
    return PSIConfig(wavelengths=tuple(cfg.wavelengths))


def height_span(cfg: PSIPretrainConfig) -> float:
    """The training wafers' height span (µm): 35 µm for the default lasers (1.17× their alias
    separation, 30.0 µm), as much of the separation for other lasers, at most 35: lasers that
    alias sooner (5.0/5.5/6.05: 27.3 µm → 31.8) get shallower wafers, since a wafer the lasers
    cannot tell from a shifted one would teach wrong fringe orders."""
    from cpikan.psi.classical import alias_separation

    ratio = WaferSpec.h_max / alias_separation(DEFAULT_PSI)
    return min(WaferSpec.h_max, round(ratio * alias_separation(psi_of(cfg)), 1))


def build_model(cfg: PSIPretrainConfig) -> PSINet:
    torch.manual_seed(cfg.seed)
    return PSINet(width=cfg.width, depth=cfg.depth, cfg=psi_of(cfg), h_max=height_span(cfg))


def run(config: PSIPretrainConfig, ctx: Any) -> dict[str, float]:
    schedule = config.schedule()
    psi, span = psi_of(config), height_span(config)
    val_dir = synthetic_dataset(WaferSpec(config.val_size, config.val_size, seed=config.data_seed + 1, h_max=span), psi)
    ctx.log_dataset(val_dir / "buckets.npy", "val_buckets", context="validation")
    vb, vh = open_memmap_dataset(val_dir)
    model = build_model(config)
    tasks = []
    for f in schedule.factors:  # the same wafer, f× coarser pixels (f = 1: the training wafer)
        patch = level_patch(config.patch, f, model.downsampling_factor) if f > 1 else config.patch
        size = max(config.train_size // f, patch)
        train_dir = synthetic_dataset(WaferSpec(size, size, seed=config.data_seed, h_max=span), psi)
        ctx.log_dataset(train_dir / "buckets.npy", "train_buckets" if f == 1 else f"train_buckets_{f}x")
        spec = PSITrainSpec(loss=config.loss, patch=patch, batch_size=config.batch_size,
                            noise_levels=config.noise_levels, seed=config.seed)
        tasks.append(PSITask(*open_memmap_dataset(train_dir), spec, (vb, vh), psi))
    train_cfg = TrainConfig(adam_steps=1, lr=config.lr, clip_grad_norm=1.0, seed=config.seed,
                            nan_snapshot_every=50, eval_every=max(config.steps // 3, 1))
    t0 = time.perf_counter()
    result = train_levels(model, tasks, schedule, train_cfg, [ctx.metrics_callback()])
    seconds = time.perf_counter() - t0
    results = {"rmse_nm": result.metrics["rmse_nm"], "classical_rmse_nm": result.metrics["classical_rmse_nm"],
               "final_loss": result.loss}
    ctx.log_results(results, {"seconds": seconds})
    log_model(ctx, {"model": model}, "studies.psi_pretrain:build_model", config)
    return results


def load_model(run_id: str) -> PSINet:
    """The pretrained PSINet of a psi_pretrain run (safetensors weights; never a pickle)."""
    return models.load_model(run_id)[0]


def _space(trial: Any, base: PSIPretrainConfig) -> PSIPretrainConfig:
    return replace(base, lr=trial.suggest_float("lr", 3e-4, 3e-3, log=True)) if trial.number else base


register(Study("psi_pretrain", PSIPretrainConfig, PSIPretrainConfig, _space, [("rmse_nm", "minimize")],
               "studies.psi_pretrain:run", default_trials=1))
