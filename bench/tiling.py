"""Out-of-core tiled inference on a full-size PSI image: 9344 × 7000 × 16 uint16 on disk
→ float32 height memmap, with bounded memory.

Writes a synthetic wafer (memmaps, row blocks), runs the project U-Net (width 8, depth 3,
buckets scaled by the fixed dataset normalisation) through ``predict_tiled`` in
crop mode reading from and writing to disk, and prints Mpix/s and the peak RSS of the
inference (measured in a fresh child process so dataset writing does not count). On a
crop that fits in memory it also compares tiled with full-image inference. Exits 1 if
peak RSS exceeds --max-rss-gb or the crop error exceeds 1e-5·max|y|.

    .venv/bin/python bench/tiling.py [--height 9344 --width 7000] [--tile 512 --overlap 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cpikan.arguments import ArgumentParser
from cpikan.nn.unet import UNet
from cpikan.psi.data import normalize_buckets
from cpikan.psi.synth import WaferSpec, write_dataset
from cpikan.tiling import predict_full, predict_tiled

CHILD = """
import json, sys, time, numpy as np, torch
from cpikan.memory import peak_rss_mb

from cpikan.nn.unet import UNet
from cpikan.psi.data import normalize_buckets
from cpikan.tiling import predict_tiled
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
model = UNet(16, 1, width=8, depth=3).eval()
image = np.load(args["dir"] + "/buckets.npy", mmap_mode="r")
out = np.lib.format.open_memmap(args["dir"] + "/pred.npy", mode="w+", dtype=np.float32,
                                shape=(1, *image.shape[1:]))
t0 = time.perf_counter()
predict_tiled(model, image, tile_size=args["tile"], overlap=args["overlap"], batch_size=args["batch"],
              out=out, progress=True, normalize=normalize_buckets)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_kb": peak_rss_mb() * 1024}))
"""


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=9344)
    ap.add_argument("--width", type=int, default=7000)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-rss-gb", type=float, default=1.5)
    ap.add_argument("--dir", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        write_dataset(WaferSpec(height=args.height, width=args.width, seed=5, noise=0.01), tmp)
        print(f"wrote {args.height} × {args.width} × 16 uint16 in {time.perf_counter() - t0:.0f} s")
        child_args = {"dir": tmp, "tile": args.tile, "overlap": args.overlap, "batch": args.batch,
                      "threads": args.threads}
        res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child_args)],
                             stdout=subprocess.PIPE, text=True, check=True)
        stats = json.loads(res.stdout.strip().splitlines()[-1])
        mpix = args.height * args.width / 1e6
        rate = mpix / stats["seconds"]
        rss_gb = stats["peak_rss_kb"] / 2**20
        # exactness on a crop that fits in memory (same weights: seed 0)
        torch.manual_seed(0)
        model = UNet(16, 1, width=8, depth=3).eval()
        image = np.load(Path(tmp) / "buckets.npy", mmap_mode="r")
        crop = np.asarray(image[:, :1500, :1300])
        full = predict_full(model, crop, normalize=normalize_buckets)
        tiled = predict_tiled(model, crop, tile_size=args.tile, overlap=args.overlap, normalize=normalize_buckets)
        rel = float(np.abs(tiled - full).max() / np.abs(full).max())
        pred = np.load(Path(tmp) / "pred.npy", mmap_mode="r")
        # the big run's top-left crop must match too (away from the crop's own cut edges)
        big_rel = float(np.abs(pred[:, :1000, :1000] - full[:, :1000, :1000]).max() / np.abs(full).max())
    print(f"tiled inference: {mpix:.1f} Mpix in {stats['seconds']:.0f} s = {rate:.3f} Mpix/s, "
          f"peak RSS {rss_gb:.2f} GB (tile {args.tile}, overlap {args.overlap}, batch {args.batch}, "
          f"{args.threads} threads)")
    print(f"crop 1500 × 1300: max|tiled − full| / max|full| = {rel:.2e}; big run vs full on its corner: {big_rel:.2e}")
    ok = rss_gb <= args.max_rss_gb and rel <= 1e-5 and big_rel <= 1e-5
    print(f"mpix_per_s={rate:.3f} seconds={stats['seconds']:.0f} peak_rss_gb={rss_gb:.2f} "
          f"crop_rel_err={rel:.1e} full_run_corner_rel_err={big_rel:.1e} ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
