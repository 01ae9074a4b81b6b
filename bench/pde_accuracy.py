"""Accuracy of Scaled-cPIKAN on a PDE benchmark (DOMAIN.md §2), against its target.

    .venv/bin/python bench/pde_accuracy.py PROBLEM [--threads 2] [--seed 0] [--budget preset]

PROBLEM is one of: helmholtz1d, helmholtz2d, diffusion, poisson3d, reaction_diffusion,
reaction_diffusion_inverse. Prints the settings, the relative L2 error on the problem's
fixed evaluation grid and the wall seconds (for ``diffusion`` also the MLP baseline
[2, 19, 19, 1] trained under the same budget; for the inverse problem the errors of D and
κ). ``--budget published`` trains with the published code's own budget instead of the
preset's (Adam, lr 1e-3, 10 000 full-batch epochs, no L-BFGS). The last line holds the
figures as key=value pairs; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace

import torch
from tqdm import tqdm

from cpikan.experiment import ModelConfig, PINNConfig, n_parameters, run_pinn
from cpikan.presets import PRESETS
from cpikan.train import Callback

# (max relative L2, max seconds); None: no bound
TARGETS = {"helmholtz1d": (1e-4, 180), "helmholtz2d": (1e-3, 900), "diffusion": (1e-3, None),
           "poisson3d": (1e-3, 600), "reaction_diffusion": (1e-3, None),
           "reaction_diffusion_inverse": (None, None)}
# the published Scaled-cPIKAN code's training: plain Adam, full batch, no L-BFGS
PUBLISHED_BUDGET = {"adam_steps": 10000, "lr": 1e-3, "scheduler": "none", "lbfgs_steps": 0, "lm_steps": 0}


class Progress(Callback):
    def __init__(self, total: int, label: str) -> None:
        self.bar = tqdm(total=total, desc=label, unit="step", mininterval=2.0, file=sys.stderr)
        self.last = 0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.update(step - self.last)
        self.last = step
        self.bar.set_postfix(loss=f"{metrics['loss']:.2e}", refresh=False)

    def on_train_end(self, result: object) -> None:
        self.bar.close()


def train(cfg: PINNConfig, label: str) -> tuple[dict[str, float], float, int]:
    total = cfg.train.adam_steps + cfg.train.lbfgs_steps + cfg.train.lm_steps
    t0 = time.perf_counter()
    result, model, _ = run_pinn(cfg, [Progress(total, label)])
    return result.metrics, time.perf_counter() - t0, n_parameters(model)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("problem", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", choices=("preset", "published"), default="preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.problem]
    cfg = replace(cfg, train=replace(cfg.train, seed=args.seed))
    if args.budget == "published":
        cfg = replace(cfg, train=replace(cfg.train, **PUBLISHED_BUDGET))
    print("settings:", json.dumps(asdict(cfg), sort_keys=True))
    metrics, seconds, n_params = train(cfg, f"{args.problem} cPIKAN")
    rel = metrics["rel_l2"]
    figures = {"rel_l2": f"{rel:.3e}", "seconds": f"{seconds:.0f}", "params": n_params}
    print(f"Scaled-cPIKAN  params={n_params}  rel_l2={rel:.3e}  seconds={seconds:.1f}")
    max_rel, max_s = TARGETS[args.problem]
    ok = (max_rel is None or rel <= max_rel) and (max_s is None or seconds <= max_s)

    if args.problem == "diffusion":
        mlp = replace(cfg, model=ModelConfig(kind="mlp", hidden=(19, 19), dtype=cfg.model.dtype))
        m_metrics, m_seconds, m_params = train(mlp, "diffusion MLP")
        ratio = m_metrics["rel_l2"] / rel
        print(f"MLP baseline   params={m_params}  rel_l2={m_metrics['rel_l2']:.3e}  "
              f"seconds={m_seconds:.1f}  (MLP error / cPIKAN error = {ratio:.1f})")
        figures.update(mlp_rel_l2=f"{m_metrics['rel_l2']:.3e}", mlp_seconds=f"{m_seconds:.0f}",
                       mlp_over_cpikan=f"{ratio:.1f}")
        ok &= ratio >= 10
    if args.problem == "reaction_diffusion_inverse":
        print(f"D={metrics['D']:.5f} (true 0.1, rel err {metrics['D_rel_err']:.2%})  "
              f"kappa={metrics['kappa']:.5f} (true 0.5, rel err {metrics['kappa_rel_err']:.2%})")
        figures.update(D_rel_err=f"{metrics['D_rel_err']:.2e}",
                       kappa_rel_err=f"{metrics['kappa_rel_err']:.2e}")
        ok &= metrics["D_rel_err"] <= 0.01 and metrics["kappa_rel_err"] <= 0.01
    figures["budget"] = args.budget
    figures["ok"] = int(ok)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
