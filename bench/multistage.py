"""Multi-stage training toward float64 precision on one PDE benchmark.

Stage 1 is the problem's preset (cpikan.presets); each later stage fits the residual left
by the ones before it (cpikan.multistage): a small Scaled-cPIKAN on the 1-D problems, a
tensor-product Chebyshev stage (``stage_kind=spectral``, degrees per coordinate in
``SPECTRAL``) on the 2-D and 3-D ones, where a small network cannot represent the broadband
error stage 1 leaves (docs/domain.md, multi-stage). Prints one row per stage (its output scale ε,
the residual's dominant frequency, the residual RMS after it, the error on the problem's
fixed evaluation grid against the exact solution, seconds) and ends with
``rel_l2=… seconds=… stages=… target=…``. Exits 1 above the target (issue 16) or past
15 minutes.

    .venv/bin/python bench/multistage.py helmholtz1d [--stages 4] [--set lm_steps=300 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, fields, replace

import torch
from threadpoolctl import threadpool_limits

from cpikan.arguments import ArgumentParser
from cpikan.experiment import ModelConfig, PINNConfig
from cpikan.multistage import MultiStageConfig, train_multistage
from cpikan.presets import PRESETS
from cpikan.train import TrainConfig

TARGETS = {"regression1d": 1e-10, "helmholtz1d": 1e-9, "diffusion": 1e-8, "helmholtz2d": 1e-7, "poisson3d": 1e-6}
REGRESSION = PINNConfig("regression1d", {"n_interior": 1000}, ModelConfig(hidden=(16,), degree=8, dtype="float64"),
                        TrainConfig(adam_steps=0, lm_steps=400, lm_solver="svd"))
#: per-coordinate (total) degrees of the spectral stages, read off the Chebyshev spectrum of
#: stage 1's error and measured (docs/domain.md, multi-stage)
SPECTRAL = {"diffusion": (160, 40), "helmholtz2d": (128, 160), "poisson3d": (24, 24, 24)}
LIMIT_S = 15 * 60


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("problem", choices=sorted(TARGETS))
    ap.add_argument("--stages", type=int, default=0, help="default: 2 with spectral stages, else 4")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a MultiStageConfig field")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # LAPACK's QR of the spectral stages too
    base = REGRESSION if args.problem == "regression1d" else PRESETS[args.problem]
    if args.problem in SPECTRAL:
        kw: dict = {"stages": args.stages or 2, "stage_kind": "spectral", "spectral_degrees": SPECTRAL[args.problem],
                    "spectral_basis": "total", "spectral_points": 2.5}
    else:  # network stages need stage 1 solved to the last digits too (cond(J) ~1e12)
        base = replace(base, train=replace(base.train, lm_solver="svd"))
        kw = {"stages": args.stages or 4, "hidden": (8,), "degree": 24, "lm_steps": 400, "points_factor": 2.0}
    types = {f.name: f.type for f in fields(MultiStageConfig)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in types or key == "base":
            ap.error(f"--set {key}: not a MultiStageConfig field; allowed: {', '.join(t for t in types if t != 'base')}")
        kind = type(asdict(MultiStageConfig())[key])
        kw[key] = tuple(int(v) for v in value.split(",")) if kind is tuple else kind(value)
    cfg = MultiStageConfig(base, **kw)
    print(f"{args.problem}: {cfg.to_json()}")
    print(f"{'stage':>5}{'scale ε':>10}{'freq':>7}{'residual':>10}{'rel_l2':>10}{'steps':>6}{'seconds':>8}")
    t0 = time.perf_counter()

    def row(s: object) -> None:
        print(f"{s.stage:>5}{s.scale:>10.2e}{s.frequency:>7.2f}{s.residual_rms:>10.2e}{s.rel_l2:>10.2e}"  # type: ignore[attr-defined]
              f"{s.steps:>6}{s.seconds:>8.0f}{'' if s.kept else '  removed: residual grew'}", flush=True)  # type: ignore[attr-defined]

    _, _, stages = train_multistage(cfg, on_stage=row)
    seconds = time.perf_counter() - t0
    kept = [s for s in stages if s.kept]  # a stage that made the residual worse was removed
    rel, target = kept[-1].rel_l2, TARGETS[args.problem]
    ok = rel <= target and seconds <= LIMIT_S
    print(f"rel_l2={rel:.2e} seconds={seconds:.0f} stages={len(kept)} single_stage={stages[0].rel_l2:.2e} "
          f"target={target:.0e} ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
