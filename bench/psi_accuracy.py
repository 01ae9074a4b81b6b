"""Height RMSE of the classical and the learned PSI reconstruction at 0 %, 1 % and 5 % noise.

Trains PSINet (U-Net refining the classical estimate, supervised on synthetic wafers with
noise drawn from {0, 1, 5 %}) for --minutes of CPU time at most, then evaluates both
methods on a held-out wafer. Noise is Gaussian with σ = level·B. Exits 1 if the classical
noise-free RMSE exceeds 1 nm.

    .venv/bin/python bench/psi_accuracy.py [--minutes 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from cpikan.arguments import ArgumentParser
from cpikan.psi.classical import reconstruct
from cpikan.psi.data import open_memmap_dataset
from cpikan.psi.model import PSINet
from cpikan.psi.physics import add_noise, dequantize
from cpikan.psi.synth import WaferSpec, write_dataset
from cpikan.psi.train import PSITask, PSITrainSpec
from cpikan.tiling import predict_tiled
from cpikan.train import Callback, TrainConfig, Trainer

LEVELS = (0.0, 0.01, 0.05)


class Deadline(Callback):
    def __init__(self, trainer_ref: list, seconds: float) -> None:
        self.ref, self.end = trainer_ref, time.monotonic() + seconds

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if time.monotonic() > self.end:
            self.ref[0].until = step  # stop cleanly after this step


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=100_000, help="upper bound; the time budget usually ends first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512, help="evaluation wafer size (pixels)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(WaferSpec(height=1536, width=1536, seed=11), f"{tmp}/train", progress=False)
        write_dataset(WaferSpec(height=args.size, width=args.size, seed=12), f"{tmp}/val", progress=False)
        b, h = open_memmap_dataset(f"{tmp}/train")
        vb, vh = open_memmap_dataset(f"{tmp}/val")
        spec = PSITrainSpec(loss="supervised", patch=64, batch_size=8, noise_levels=LEVELS, eval_noise=0.05)
        task = PSITask(b, h, spec, (vb[:, :256, :256], vh[:256, :256]))
        torch.manual_seed(0)
        model = PSINet(width=8, depth=3)
        cfg = TrainConfig(adam_steps=args.steps, lr=1e-3, scheduler="none", clip_grad_norm=1.0,
                          nan_snapshot_every=100)
        ref: list = []
        trainer = Trainer(model, task, cfg, [Deadline(ref, args.minutes * 60)])
        ref.append(trainer)
        t0 = time.perf_counter()
        trainer.fit()
        train_s = time.perf_counter() - t0
        model.eval()
        clean = dequantize(np.asarray(vb))
        truth = np.asarray(vh)
        rows, figures = [], {}
        rng = np.random.default_rng(2024)
        for level in LEVELS:
            x = add_noise(clean, level, "gaussian", rng) if level else clean
            est, _ = reconstruct(x)
            pred = predict_tiled(model, x, tile_size=256, overlap=128)[0]
            c_nm = float(np.sqrt(np.mean((est - truth) ** 2)) * 1000)
            l_nm = float(np.sqrt(np.mean((pred - truth) ** 2)) * 1000)
            rows.append((level, c_nm, l_nm))
            pct = int(round(level * 100))
            figures[f"classical_nm_{pct}pct"] = f"{c_nm:.3f}"
            figures[f"learned_nm_{pct}pct"] = f"{l_nm:.3f}"
    print(f"trained {trainer.step} steps in {train_s:.0f} s ({args.threads} threads)")
    print(f"{'noise':>6} {'classical RMSE nm':>18} {'learned RMSE nm':>16}")
    for level, c, l in rows:
        print(f"{level:6.0%} {c:18.3f} {l:16.3f}")
    figures.update(train_seconds=f"{train_s:.0f}", train_steps=trainer.step,
                   learned_beats_classical_5pct=int(rows[-1][2] < rows[-1][1]))
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return 0 if rows[0][1] <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
