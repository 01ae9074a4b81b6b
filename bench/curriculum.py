"""Multi-resolution curriculum vs single-resolution training of the PSI network (issue 18).

    .venv/bin/python bench/curriculum.py [--seeds 0,1,2] [--schedule 4:400,2:200,1:300] [--steps 600]

For each seed, the same PSINet (width 8, depth 3, loss ``both``: supervised + physics) trains
(a) at full resolution for ``--steps`` steps and (b) through the schedule's levels
(``cpikan.psi.curriculum``: factor f = the same synthetic wafer with f× coarser pixels and
f× smaller patches). Both are validated every 25 steps on the same full-resolution held-out
wafer (0.05 noise). Training seconds exclude the validations. The target is the error the
single-resolution run reaches at its end (+2 %); each run's time to the target is read off
its validation curve. Ends with one line: ``speedup=… (median over seeds of t_single /
t_curriculum) steps_ratio=… rmse_single=… rmse_curriculum=… seconds=…``. The figure is reported
whatever it is; exits 1 only when a run fails to produce a curve.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cpikan.arguments import ArgumentParser
from cpikan.psi.curriculum import CurriculumConfig, level_patch, train_levels
from cpikan.psi.data import open_memmap_dataset
from cpikan.psi.model import PSINet
from cpikan.psi.synth import WaferSpec, write_dataset
from cpikan.psi.train import PSITask, PSITrainSpec
from cpikan.train import Callback, TrainConfig

TRAIN_SIZE, VAL_SIZE, PATCH, EVAL_EVERY = 1024, 256, 64, 25


class Clock(Callback):
    """Training seconds (validations excluded) and the validation curve, across levels."""

    def __init__(self, bar: tqdm) -> None:
        self.bar, self.seconds, self.steps, self.mark = bar, 0.0, 0, time.perf_counter()
        self.curve: list[tuple[float, int, float]] = []

    def on_train_begin(self, trainer: object) -> None:
        self.mark = time.perf_counter()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        self.seconds += now - self.mark
        self.mark = now
        self.steps += 1
        self.bar.update(1)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.curve.append((self.seconds, self.steps, metrics["rmse_nm"]))
        self.mark = time.perf_counter()


def time_to(curve: list[tuple[float, int, float]], target: float) -> tuple[float, int]:
    for seconds, steps, rmse in curve:
        if rmse <= target:
            return seconds, steps
    return float("inf"), 0


def datasets(root: Path, factors: tuple[int, ...], seed: int) -> dict[int, tuple]:
    out = {}
    for f in factors:
        d = root / f"train_{f}"
        if not (d / "buckets.npy").exists():
            write_dataset(WaferSpec(TRAIN_SIZE // f, TRAIN_SIZE // f, seed=seed), d, progress=False)
        out[f] = open_memmap_dataset(d)
    return out


def run(levels: CurriculumConfig, data: dict[int, tuple], val: tuple, seed: int, bar: tqdm) -> Clock:
    torch.manual_seed(seed)
    model = PSINet(width=8, depth=3)
    tasks = []
    for f in levels.factors:
        spec = PSITrainSpec(loss="both", patch=level_patch(PATCH, f, model.downsampling_factor),
                            batch_size=8, seed=seed)
        tasks.append(PSITask(*data[f], spec, val))
    clock = Clock(bar)
    train = TrainConfig(adam_steps=1, lr=1e-3, clip_grad_norm=1.0, seed=seed, eval_every=EVAL_EVERY)
    train_levels(model, tasks, levels, train, [clock])
    return clock


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--schedule", default="4:400,2:200,1:300", help="factor:steps per level, coarse to fine")
    ap.add_argument("--steps", type=int, default=600, help="single-resolution steps")
    args = ap.parse_args(argv)
    pairs = [p.split(":") for p in args.schedule.split(",")]
    schedule = CurriculumConfig(tuple(int(f) for f, _ in pairs), tuple(int(s) for _, s in pairs))
    single = CurriculumConfig((1,), (args.steps,))
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)  # one core per run, as the machine gives a worker
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = datasets(Path(tmp), schedule.factors, seed=11)
        val_dir = write_dataset(WaferSpec(VAL_SIZE, VAL_SIZE, seed=12), Path(tmp) / "val", progress=False)
        val = open_memmap_dataset(val_dir)
        bar = tqdm(total=len(seeds) * (single.total_steps + schedule.total_steps), desc="curriculum",
                   unit="step", mininterval=2.0, file=sys.stderr)
        for seed in seeds:
            a = run(single, data, val, seed, bar)
            b = run(schedule, data, val, seed, bar)
            if not a.curve or not b.curve:
                print(f"seed {seed}: no validation curve", file=sys.stderr)
                return 1
            target = a.curve[-1][2] * 1.02
            (ta, sa), (tb, sb) = time_to(a.curve, target), time_to(b.curve, target)
            rows.append((seed, target, ta, sa, tb, sb, a.curve[-1][2], b.curve[-1][2]))
        bar.close()
    print(f"{'seed':>4} {'target nm':>9} {'single s':>9} {'steps':>6} {'curric s':>9} {'steps':>6} "
          f"{'final single':>12} {'final curric':>12}", file=sys.stderr)
    for seed, target, ta, sa, tb, sb, fa, fb in rows:
        print(f"{seed:>4} {target:9.3f} {ta:9.1f} {sa:6d} {tb:9.1f} {sb:6d} {fa:12.3f} {fb:12.3f}", file=sys.stderr)
    speedup = statistics.median(ta / tb for _, _, ta, _, tb, _, _, _ in rows)
    steps_ratio = statistics.median(sa / sb if sb else 0.0 for _, _, _, sa, _, sb, _, _ in rows)
    print(f"speedup={speedup:.2f} steps_ratio={steps_ratio:.2f} "
          f"rmse_single={statistics.median(r[6] for r in rows):.3f} "
          f"rmse_curriculum={statistics.median(r[7] for r in rows):.3f} seconds={time.perf_counter() - t0:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
