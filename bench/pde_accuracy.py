"""Accuracy of Scaled-cPIKAN on a PDE benchmark (docs/domain.md §2), against its target.

    .venv/bin/python bench/pde_accuracy.py PROBLEM [--threads 2] [--seeds 0-19 | --seed 0,1,2] [--budget preset]

PROBLEM is one of: helmholtz1d, helmholtz2d, diffusion, poisson3d, reaction_diffusion,
reaction_diffusion_inverse. Prints the settings, the relative L2 error on the problem's
fixed evaluation grid and the wall seconds (for ``diffusion`` also the MLP baseline
[2, 19, 19, 1] trained under the same budget; for the inverse problem the errors of D and
κ). ``--budget published`` trains with the published code's own budget instead of the
preset's (Adam, lr 1e-3, 10 000 full-batch epochs, no L-BFGS). The last line holds the
figures as key=value pairs; with several seeds (``--seeds 0-19``) the median of each
figure, the worst error and ``success_rate`` (the share of seeds at or under the target).
Exits 1 when the success rate is under 95 % (issue 16; a single seed must meet it). For
diffusion the MLP baseline's ratio is reported, not asserted: the old "≥ 10× below the MLP"
criterion was retired (1.1–69× over five seeds once both get the same optimiser).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace

import torch
from tqdm import tqdm

from cpikan.arguments import ArgumentParser
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


def seed_list(text: str) -> list[int]:
    """``0``, ``0,1,2`` or a range ``0-19``."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            if hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds: one (0), a list (0,1,2) or a range (0-19), got {text!r}") from None


def run_seed(cfg: PINNConfig, problem: str, seed: int) -> tuple[dict[str, float], bool]:
    """Train at one seed: this seed's figures, and whether it met every target."""
    cfg = replace(cfg, train=replace(cfg.train, seed=seed))
    metrics, seconds, n_params = train(cfg, f"{problem} cPIKAN seed {seed}")
    rel = metrics["rel_l2"]
    row = {"rel_l2": rel, "seconds": seconds, "params": n_params}
    print(f"seed {seed}: Scaled-cPIKAN  params={n_params}  rel_l2={rel:.3e}  seconds={seconds:.1f}")
    max_rel, max_s = TARGETS[problem]
    ok = (max_rel is None or rel <= max_rel) and (max_s is None or seconds <= max_s)
    if problem == "diffusion":
        mlp = replace(cfg, model=ModelConfig(kind="mlp", hidden=(19, 19), dtype=cfg.model.dtype))
        m_metrics, m_seconds, m_params = train(mlp, f"diffusion MLP seed {seed}")
        ratio = m_metrics["rel_l2"] / rel
        print(f"seed {seed}: MLP baseline   params={m_params}  rel_l2={m_metrics['rel_l2']:.3e}  "
              f"seconds={m_seconds:.1f}  (MLP error / cPIKAN error = {ratio:.1f})")
        row.update(mlp_rel_l2=m_metrics["rel_l2"], mlp_seconds=m_seconds, mlp_over_cpikan=ratio)
    if problem == "reaction_diffusion_inverse":
        print(f"seed {seed}: D={metrics['D']:.5f} (true 0.1, rel err {metrics['D_rel_err']:.2%})  "
              f"kappa={metrics['kappa']:.5f} (true 0.5, rel err {metrics['kappa_rel_err']:.2%})")
        row.update(D_rel_err=metrics["D_rel_err"], kappa_rel_err=metrics["kappa_rel_err"])
        ok &= metrics["D_rel_err"] <= 0.01 and metrics["kappa_rel_err"] <= 0.01
    return row, ok


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("problem", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", "--seeds", dest="seed", type=seed_list, default=[0],
                    help="a seed, seeds as 0,1,2, or a range 0-19")
    ap.add_argument("--budget", choices=("preset", "published"), default="preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.problem]
    if args.budget == "published":
        cfg = replace(cfg, train=replace(cfg.train, **PUBLISHED_BUDGET))
    print("settings:", json.dumps(asdict(cfg), sort_keys=True), "seeds:", args.seed)
    rows, oks = zip(*(run_seed(cfg, args.problem, s) for s in args.seed))
    # several seeds: the median of each figure, and the share of seeds that met the target
    figures = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    shown = {k: (f"{v:.0f}" if k in ("seconds", "mlp_seconds", "params") else
                 f"{v:.1f}" if k == "mlp_over_cpikan" else f"{v:.3e}") for k, v in figures.items()}
    if len(rows) > 1:
        shown["seeds"] = len(rows)
        shown["worst_rel_l2"] = f"{max(r['rel_l2'] for r in rows):.3e}"
    rate = sum(oks) / len(oks)
    shown["success_rate"] = f"{rate:.2f}"
    shown["budget"] = args.budget
    shown["ok"] = int(rate >= 0.95)
    print(" ".join(f"{k}={v}" for k, v in shown.items()))
    return 0 if rate >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
