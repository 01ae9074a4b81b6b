"""The production command on a full-size wafer: 16 uint16 TIFF files → height, in bounded memory.

Writes a synthetic 9344 × 7000 wafer as 16 bucket TIFFs (one channel in memory at a time),
runs ``python -m studies.reconstruct`` on them in a child process (so writing the data does
not count) and reports its throughput, its peak RSS (the command's own VmHWM) and the height error against the
synthetic truth. With a model (``--model best``, the default: the best psi_pretrain run, or a
short one trained first as ``make demo`` does; or a run ID) it also measures
``tiling_efficiency`` (tiled Mpix/s ÷ full-image Mpix/s, with the command's own tile plan)
and the tiled-vs-full error, on a 2048 × 2048 crop that fits in memory.
Exits 1 if peak RSS exceeds --max-rss-gb or tiling_efficiency is below 0.7.
Measured (2 cores, channels_last tiles, 2026-12-04): 9344 × 7000 mpix_per_s=0.156
peak_rss_gb=1.07 tiling_efficiency=2.28; 16384 × 16384 (45 min, beside a one-thread job)
mpix_per_s=0.100 peak_rss_gb=1.33 tiling_efficiency=1.09; max_rel_err_vs_full=0.0 both.
RSS is VmHWM in GiB. (rmse_um=0.047 is the model's: a short psi_pretrain run trained first.)
2026-12-06, after the mask's noise, clipping and phase-shifter tests: 9344 × 7000
mpix_per_s=0.162 peak_rss_gb=1.14 tiling_efficiency=2.26 max_rel_err_vs_full=0.0 (model);
--model classical mpix_per_s=0.379 peak_rss_gb=0.86 valid=0.9569. With the noise judged at each
pixel's brightness and the row chunks side by side on both cores: --model classical
mpix_per_s=0.507 peak_rss_gb=0.80 valid=0.9569 rmse_um=0.0016 (the command alone 0.57 Mpix/s, 115 s);
with a model mpix_per_s=0.201 (was 0.162) peak_rss_gb=1.14 tiling_efficiency=1.99 max_rel_err_vs_full=0.0.
With the joint search scored in float32 from laser 0's base misfit: --model classical
mpix_per_s=1.231 peak_rss_gb=0.71 valid=0.9569 rmse_um=0.0016 (the command alone 1.66 Mpix/s, 39.5 s);
with a model (PSINet's search too) mpix_per_s=0.330 peak_rss_gb=1.15 tiling_efficiency=1.52
max_rel_err_vs_full=0.0 (the command alone 178.8 s).
One sample shared by every whole-wafer figure: --model classical mpix_per_s=1.198 peak_rss_gb=0.59
valid=0.9569 rmse_um=0.0016 (the command alone 41.2 s).

    .venv/bin/python bench/reconstruct.py [--height 9344 --width 7000] [--model best|RUN_ID|classical]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cpikan.arguments import ArgumentParser


def write_tiffs(height: int, width: int, folder: Path) -> Path:
    import tifffile

    from cpikan.psi.synth import WaferSpec, write_dataset

    data = write_dataset(WaferSpec(height, width, seed=3, noise=0.01), folder / "synth", progress=False)
    buckets = np.load(data / "buckets.npy", mmap_mode="r")
    wafer = folder / "wafer"
    wafer.mkdir()
    for c in range(buckets.shape[0]):
        tifffile.imwrite(wafer / f"bucket_{c:02d}.tif", np.asarray(buckets[c]))
    return wafer


def model_run(ref: str) -> str:
    """A psi_pretrain run ID: ``best`` resolves (training a short one when the store has none)."""
    if ref != "best":
        return ref
    from studies.tiling_sweep import TilingSweepConfig, resolve_model

    return resolve_model(TilingSweepConfig())


def tiling_efficiency(run_id: str, size: int = 2048) -> tuple[float, float, dict[str, float]]:
    """(tiled ÷ full Mpix/s, max relative tiled-vs-full error, the tile plan) on a size² crop."""
    from cpikan.psi.synth import WaferSpec, write_dataset
    from cpikan.tiling import predict_full, predict_tiled
    from studies.reconstruct import ReconstructConfig, load_model, tile_plan

    model, _ = load_model(run_id)
    plan = tile_plan(model, 16, ReconstructConfig())
    with tempfile.TemporaryDirectory() as tmp:
        image = np.load(write_dataset(WaferSpec(size, size, seed=4), tmp, progress=False) / "buckets.npy")
        predict_full(model, image[:, :256, :256])  # warm-up: first-call allocations count for neither
        t0 = time.perf_counter()
        full = predict_full(model, image)
        t_full = time.perf_counter() - t0
        t0 = time.perf_counter()
        tiled = predict_tiled(model, image, tile_size=int(plan["tile"]), overlap=int(plan["overlap"]),
                              batch_size=int(plan["batch_size"]))
        t_tiled = time.perf_counter() - t0
    return t_full / t_tiled, float(np.abs(tiled - full).max() / np.abs(full).max()), plan


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=9344)
    ap.add_argument("--width", type=int, default=7000)
    ap.add_argument("--model", default="best", help="best (default), a psi_pretrain run ID, or classical")
    ap.add_argument("--max-rss-gb", type=float, default=1.5)
    args = ap.parse_args()
    if args.model != "classical":
        args.model = model_run(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        wafer = write_tiffs(args.height, args.width, Path(tmp))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "studies.reconstruct", str(wafer), "--out", f"{tmp}/out",
                              "--model", args.model, "--no-track"], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        # the command's own VmHWM (getrusage's child maxrss inherits this process's peak at fork)
        peak_gb = float(re.search(r"peak RSS ([0-9.]+) GB", out.stdout).group(1))
        truth = np.load(Path(tmp) / "synth" / "height.npy", mmap_mode="r")
        height = np.load(Path(tmp) / "out" / "wafer" / "height.npy", mmap_mode="r")
        mask = np.load(Path(tmp) / "out" / "wafer" / "mask.npy", mmap_mode="r")
        sq, n = 0.0, 0
        for r0 in range(0, args.height, 512):
            d = (np.asarray(height[r0 : r0 + 512], np.float64) - truth[r0 : r0 + 512])[mask[r0 : r0 + 512]]
            sq, n = sq + float(np.sum(d * d)), n + d.size
    mpix = args.height * args.width / 1e6
    figures = {"mpix_per_s": f"{mpix / seconds:.3f}", "seconds": f"{seconds:.0f}", "peak_rss_gb": f"{peak_gb:.2f}",
               "rmse_um": f"{(sq / max(n, 1)) ** 0.5:.4f}", "valid": f"{n / (args.height * args.width):.4f}"}
    ok = peak_gb <= args.max_rss_gb
    if args.model != "classical":
        eff, err, plan = tiling_efficiency(args.model)
        figures.update(tiling_efficiency=f"{eff:.2f}", max_rel_err_vs_full=f"{err:.1e}", tile=f"{plan['tile']:.0f}",
                       overlap=f"{plan['overlap']:.0f}", model=args.model)
        ok = ok and eff >= 0.7 and err <= 1e-5
    print(json.dumps({"command_stdout": out.stdout.strip()}))
    print(" ".join(f"{k}={v}" for k, v in figures.items()) + f" ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
