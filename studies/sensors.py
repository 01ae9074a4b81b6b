"""``sensor_placement`` and ``flow_inverse``: where to put K sensors, and what they recover.

- ``sensor_placement``: QR pivoting vs random vs a uniform lattice (vs python-sensors'
  SSPOR where the bench extra is installed), K from 4 to 12, sensor noise; each trial the
  linear POD estimate's error on held-out flows (median over noise draws), the placement
  saved with its basis digest (replayable), and the guard's reconstruction check. One field
  (u, v or p), or ``field=uvp``: sensors that read all three, placed on the three bases at
  once (as the inverse problem places them), the error over the three fields.
- ``flow_inverse``: the (u, v, p) Scaled-cPIKAN and Re from K sensors plus Navier–Stokes
  (cpikan.sensors.inverse); each trial logs every physics-guard figure and its status.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cpikan.config import ConfigError, bounded, choice, validate
from cpikan.sensors import flows, place, pod_basis, reconstruct
from cpikan.sensors.guard import load_thresholds
from cpikan.sensors.inverse import FlowInverseConfig, solve
from studies.registry import Study, register

PLACEMENTS = ("qr", "random", "uniform", "sspor")


@dataclass
class SensorPlacementConfig:
    flow: str = choice("kovasznay", ("kovasznay", "taylor_green"))
    field: str = choice("u", (*flows.FIELDS, "uvp"))  # uvp: each sensor reads u, v and p (a joint placement)
    grid: int = bounded(128, ge=4)
    snapshots: int = bounded(40, ge=2)
    rank: int = bounded(10, ge=1)
    k: int = bounded(12, ge=1)
    method: str = choice("qr", PLACEMENTS)
    noise: float = bounded(0.01, ge=0)
    noise_draws: int = bounded(5, ge=1)
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        validate(self)
        if self.k > self.grid * self.grid:
            raise ConfigError("k", f"{self.k} sensors but the grid has only {self.grid ** 2} points")
        if self.field == "uvp" and self.method == "sspor":
            raise ConfigError("method", "sspor places on one field's basis; with field=uvp use qr, random or uniform")
        if self.rank > self.snapshots:
            raise ConfigError("rank", f"at most the {self.snapshots} snapshots, got {self.rank}")


def _fields(cfg: SensorPlacementConfig) -> tuple[str, ...]:
    return flows.FIELDS if cfg.field == "uvp" else (cfg.field,)


def _held_out(cfg: SensorPlacementConfig, field: str) -> np.ndarray:
    """Flows of the family the basis never saw (Re or time/phase between its snapshots)."""
    snaps, _, _ = flows.snapshots(cfg.flow, cfg.grid, 2 * cfg.snapshots + 1, field, seed=cfg.seed + 1,
                                  dtype=np.float64)
    return snaps[1::2][:5]


def _sspor(train: np.ndarray, mean: np.ndarray, cfg: SensorPlacementConfig) -> np.ndarray:
    try:
        import pysensors as ps
    except ImportError:
        raise ConfigError("method", "sspor needs python-sensors (pip install -e '.[bench]')") from None
    model = ps.SSPOR(basis=ps.basis.SVD(n_basis_modes=cfg.rank, random_state=cfg.seed), n_sensors=cfg.k)
    model.fit(train - mean, quiet=True, seed=cfg.seed)
    return np.asarray(model.get_selected_sensors())


def run_placement(cfg: SensorPlacementConfig, ctx: Any) -> dict[str, float]:
    import time

    trains = [flows.snapshots(cfg.flow, cfg.grid, cfg.snapshots, f, seed=cfg.seed, dtype=np.float64)[0]
              for f in _fields(cfg)]
    tests = [_held_out(cfg, f) for f in _fields(cfg)]
    t0 = time.perf_counter()
    bases = [pod_basis(train, cfg.rank) for train in trains]
    if cfg.method == "sspor":
        from cpikan.sensors.placement import Placement

        idx = _sspor(trains[0], bases[0].mean, cfg)
        placement = Placement(tuple(int(i) for i in idx), "sspor", bases[0].digest, bases[0].points)
    else:
        placement = place(bases, cfg.k, cfg.method, seed=cfg.seed)  # one basis: plain QR pivots
    seconds = time.perf_counter() - t0
    idx = np.asarray(placement.indices)
    errors = []
    for draw in range(cfg.noise_draws):
        rng = np.random.default_rng(100 + draw)
        err = norm = 0.0
        for basis, test in zip(bases, tests):  # each field's noise is a fraction of its own range
            noise = cfg.noise * float(test.max() - test.min()) * rng.standard_normal((len(test), len(idx)))
            est = reconstruct(basis, placement, test[:, idx] + noise)
            err, norm = err + float(np.sum((est - test) ** 2)), norm + float(np.sum(test ** 2))
        errors.append(float(np.sqrt(err / norm)))
    rel = float(np.median(errors))
    th = load_thresholds()
    results = {"rel_l2": rel, "rel_l2_worst": float(max(errors)), "energy": min(b.energy for b in bases),
               "guard/reconstruction_error": rel,
               "guard/red_count": float(rel > th.red["reconstruction_error"])}
    ctx.log_results(results, {"seconds": seconds})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "placement.json"
        placement.save(path)
        ctx.log_artifact(path, "sensors")
    ctx.set_tags({"basis_digest": placement.basis_digest, "guard.thresholds_version": th.version})
    return results


def placement_space(trial: Any, base: SensorPlacementConfig) -> SensorPlacementConfig:
    methods = [m for m in PLACEMENTS if m != "sspor" or (_has_pysensors() and base.field != "uvp")]
    return replace(base, method=trial.suggest_categorical("method", methods),
                   k=trial.suggest_int("k", 4, 12, step=2), noise=trial.suggest_categorical("noise", [0.0, 0.01, 0.05]))


def _has_pysensors() -> bool:
    import importlib.util

    return importlib.util.find_spec("pysensors") is not None


def run_inverse(cfg: FlowInverseConfig, ctx: Any) -> dict[str, float]:
    def progress(phase: str, step: int, loss: float, re: float) -> None:
        offset = cfg.adam_steps if phase == "lm" else 0
        if step % 25 == 0:
            ctx.log_metrics({"loss": loss, "re_estimate": re}, step=offset + step)

    _, res = solve(cfg, progress)
    results = {"rel_l2": res.rel_l2, "rel_l2_linear": res.rel_l2_linear, "re": res.re, "re_error": res.re_error,
               "final_loss": res.loss, **res.guard.metrics()}
    ctx.log_results(results, {"seconds": res.seconds})
    ctx.set_tags({"guard.status": ",".join(f"{c}={s}" for c, s in res.guard.status.items()),
                  "guard.thresholds_version": res.guard.thresholds_version, "placement": res.placement.to_json()})
    return {**results, "seconds": res.seconds}


def inverse_space(trial: Any, base: FlowInverseConfig) -> FlowInverseConfig:
    return replace(base, placement=trial.suggest_categorical("placement", ["qr", "random"]),
                   k=trial.suggest_categorical("k", [8, 12]), seed=base.seed + trial.number)


register(Study("sensor_placement", SensorPlacementConfig, SensorPlacementConfig, placement_space,
               [("rel_l2", "minimize")], "studies.sensors:run_placement", default_trials=12))
register(Study("flow_inverse", FlowInverseConfig, FlowInverseConfig, inverse_space,
               [("rel_l2", "minimize"), ("seconds", "minimize")], "studies.sensors:run_inverse", default_trials=4))


