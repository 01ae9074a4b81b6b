"""The production command on a full-size wafer: 16 uint16 TIFF files → height, in bounded memory.

Writes a synthetic 9344 × 7000 wafer as 16 bucket TIFFs (one channel in memory at a time),
runs ``python -m studies.reconstruct`` on them in a child process (so writing the data does
not count) and reports its throughput, its peak RSS (the command's own VmHWM) and the height error against the
synthetic truth. With ``--model`` (a psi_pretrain run ID or ``best``) it also measures
``tiling_efficiency`` (tiled Mpix/s ÷ full-image Mpix/s) and the tiled-vs-full error on a
crop that fits in memory. Exits 1 if peak RSS exceeds --max-rss-gb.

    .venv/bin/python bench/reconstruct.py [--height 9344 --width 7000] [--model classical]
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


def tiling_efficiency(model_ref: str, size: int = 2048) -> tuple[float, float]:
    from cpikan.psi.synth import WaferSpec, write_dataset
    from cpikan.tiling import predict_full, predict_tiled
    from studies.reconstruct import load_model

    model, _ = load_model(model_ref)
    with tempfile.TemporaryDirectory() as tmp:
        image = np.load(write_dataset(WaferSpec(size, size, seed=4), tmp, progress=False) / "buckets.npy")
        t0 = time.perf_counter()
        full = predict_full(model, image)
        t_full = time.perf_counter() - t0
        t0 = time.perf_counter()
        tiled = predict_tiled(model, image, tile_size=512, overlap=128)
        t_tiled = time.perf_counter() - t0
    return t_full / t_tiled, float(np.abs(tiled - full).max() / np.abs(full).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=9344)
    ap.add_argument("--width", type=int, default=7000)
    ap.add_argument("--model", default="classical")
    ap.add_argument("--max-rss-gb", type=float, default=1.5)
    args = ap.parse_args()
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
    if args.model != "classical":
        eff, err = tiling_efficiency(args.model)
        figures.update(tiling_efficiency=f"{eff:.2f}", max_rel_err_vs_full=f"{err:.1e}")
    ok = peak_gb <= args.max_rss_gb
    print(json.dumps({"command_stdout": out.stdout.strip()}))
    print(" ".join(f"{k}={v}" for k, v in figures.items()) + f" ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
