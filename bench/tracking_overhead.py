"""Wall-time overhead of per-step metric logging on a 2000-step CPU training.

Three ways, same training (diffusion, [2, 8, 8, 1] Scaled-cPIKAN, 8 metrics a step):
  off    — no tracking;
  ours   — tracking.Tracker: buffered, log_batch ≤ 1000 metrics a call from a writer process;
  naive  — mlflow.log_metric once per metric per step.
"off" and "ours" alternate over --repeats rounds (median taken) so machine noise hits both.
The store is a fresh SQLite file in a temporary folder. Exits 1 if our per-step logging
adds more than 2 % to the training loop; the end-of-run flush is printed beside it.

    .venv/bin/python bench/tracking_overhead.py [--steps 2000] [--repeats 3] [--naive-steps 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from cpikan.arguments import ArgumentParser
from cpikan.experiment import ModelConfig, PINNConfig, build
from cpikan.train import Callback, TrainConfig, Trainer

KEYS = ("loss", "loss_pde", "loss_bc", "loss_ic", "lr", "grad_norm", "weight_pde", "weight_bc")


class Forward(Callback):
    def __init__(self, log) -> None:  # type: ignore[no-untyped-def]
        self.log = log

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.log({k: metrics[k] for k in KEYS}, step)


def train(steps: int, callbacks: list[Callback]) -> float:
    cfg = PINNConfig("diffusion", {"n_interior": 1000, "n_boundary": 200, "n_initial": 200},
                     ModelConfig(hidden=(8, 8), degree=5), TrainConfig(adam_steps=steps, lr=1e-3))
    problem, model = build(cfg)
    trainer = Trainer(model, problem, cfg.train, callbacks)
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CPIKAN_MLRUNS"] = tmp
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        import mlflow

        from tracking import store
        from tracking.tracker import Tracker

        mlflow.set_tracking_uri(store.tracking_uri())
        train(50, [])  # warm-up: imports, allocator
        off, ours, loops = [], [], []
        for _ in range(args.repeats):
            off.append(train(args.steps, []))
            with Tracker("bench/overhead") as run:
                t0 = time.perf_counter()
                loops.append(train(args.steps, [Forward(run.log_metrics)]))
                run.writer.drain()  # the end-of-run flush, reported separately
                ours.append(time.perf_counter() - t0)
        exp = store.get_or_create_experiment(store.client(), "bench/overhead")
        with mlflow.start_run(experiment_id=exp):
            def naive(metrics: dict[str, float], step: int) -> None:
                for k, v in metrics.items():
                    mlflow.log_metric(k, v, step=step)

            naive_s = train(args.naive_steps, [Forward(naive)])
    t_off, t_ours, t_loop = statistics.median(off), statistics.median(ours), statistics.median(loops)
    loop_pct = 100 * (t_loop / t_off - 1)
    naive_full = naive_s * args.steps / args.naive_steps
    ours_pct = 100 * (t_ours / t_off - 1)
    naive_pct = 100 * (naive_full / t_off - 1)
    print(f"{'mode':<8}{'seconds':>10}{'overhead':>10}")
    print(f"{'off':<8}{t_off:10.2f}{'':>10}")
    print(f"{'ours':<8}{t_loop:10.2f}{loop_pct:9.1f}%   per-step logging (training loop)")
    print(f"{'':<8}{t_ours:10.2f}{ours_pct:9.1f}%   including the end-of-run flush of the last batches")
    print(f"{'naive':<8}{naive_full:10.2f}{naive_pct:9.1f}%" + ("" if args.naive_steps == args.steps
          else f"   (measured on {args.naive_steps} steps, scaled)"))
    print(f"steps={args.steps} metrics_per_step={len(KEYS)} off_s={t_off:.2f} ours_s={t_ours:.2f} "
          f"naive_s={naive_full:.2f} ours_step_overhead_pct={loop_pct:.2f} ours_with_final_flush_pct={ours_pct:.2f} "
          f"naive_overhead_pct={naive_pct:.1f} "
          f"naive_over_ours={naive_full / t_ours:.1f}")
    return 0 if loop_pct <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
