"""Study throughput: 2 workers vs 1 on the same study, and pruning vs none at an equal best.

1. ``helmholtz1d`` (2500 Adam steps a trial, so start-up costs do not dominate): trials per minute with ``--workers 1``
   and with ``--workers 2`` (each worker gets one of the two cores).
2. ``scheduler_search`` with a seeded random sampler (so both runs draw the same configs):
   total time with the median pruner vs without, and the best value each reached.
Each run uses a fresh store in a temporary folder. Exits 1 if the 2-worker speed-up is
below 1.6× or pruning is not at least 2× faster at an equal best value.

    .venv/bin/python bench/study_parallel.py [--trials 8] [--search-trials 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpikan.arguments import ArgumentParser

ROOT = Path(__file__).resolve().parent.parent


def run_study(mlruns: str, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CPIKAN_MLRUNS=mlruns, PYTHONPATH=str(ROOT), CPIKAN_THREADS=env.get("CPIKAN_THREADS", "1"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "studies.run", *args], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def best_value(mlruns: str, name: str) -> float:
    from studies.storage import load_study

    return load_study(name, f"journal:{mlruns}/optuna/journal.log").best_value


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--search-trials", type=int, default=16)
    args = ap.parse_args()
    budget = ["--set", "train.adam_steps=2500", "--set", "train.lbfgs_steps=0",
              "--set", 'problem_kwargs={"n_interior": 200}']
    times = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            times[workers] = run_study(tmp, "helmholtz1d", "--trials", str(args.trials), "--workers",
                                       str(workers), *budget)
    rate1, rate2 = args.trials / times[1] * 60, args.trials / times[2] * 60
    speedup = rate2 / rate1
    print(f"workers=1: {rate1:.2f} trials/min   workers=2: {rate2:.2f} trials/min   ratio {speedup:.2f}")
    res = {}
    for pruner in ("default", "none"):
        with tempfile.TemporaryDirectory() as tmp:
            secs = run_study(tmp, "scheduler_search", "--trials", str(args.search_trials), "--sampler", "random",
                             "--pruner", pruner)
            res[pruner] = (secs, best_value(tmp, "scheduler_search"))
    (t_p, b_p), (t_n, b_n) = res["default"], res["none"]
    prune_speed = t_n / t_p
    same_best = abs(b_p - b_n) <= 1e-12 * max(abs(b_n), 1e-300)
    print(f"pruning: {t_p:.0f} s, best {b_p:.4e}   no pruning: {t_n:.0f} s, best {b_n:.4e}   "
          f"speed-up {prune_speed:.2f} (same best: {same_best})")
    ok = speedup >= 1.6 and prune_speed >= 2.0 and same_best
    print(f"workers_speedup={speedup:.2f} trials_per_min_1={rate1:.2f} trials_per_min_2={rate2:.2f} "
          f"pruning_speedup={prune_speed:.2f} best_pruned={b_p:.4e} best_unpruned={b_n:.4e} "
          f"same_best={int(same_best)} ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
