"""One image's rows and tiles split across processes by torchrun: identical output, speed-up.

Writes a synthetic wafer as a (16, H, W) uint16 ``.npy``, reconstructs it with a model
(``--model best`` as in bench/reconstruct.py) by
``torchrun --standalone --nproc-per-node N -m studies.reconstruct`` for N = 1 and N = --procs,
and compares the outputs byte for byte (height.npy, mask.npy, height.tif). Each process gets
cores ÷ N threads (gloo on the CPU; NCCL and one GPU per process where there are GPUs), and
the one-process run gets the same threads per process: oneDNN's convolutions round
differently with a different thread count (~1 ulp), so "identical" is asked at equal
threads. The plain command (one process, every core) is timed too, and its difference printed.
Exits 1 unless the outputs are identical.

    .venv/bin/python bench/reconstruct_parallel.py [--size 4096] [--procs 2] [--model best]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cpikan.arguments import ArgumentParser


def run(n: int, src: Path, out: Path, model: str, threads: int | None) -> float:
    """Seconds of the command's compute (its own report): via torchrun with n processes of
    ``threads`` threads, or the plain command (n = 0) with every core."""
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n else []
    cmd = [sys.executable, *launch, "-m", "studies.reconstruct", str(src), "--out", str(out), "--model", model,
           "--no-track"]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"torchrun with {n} processes failed:\n{res.stderr[-3000:]}")
    seconds = float(re.search(r"Mpix in ([0-9.]+) s", res.stdout).group(1))
    print(f"  {n or 'plain'} process(es): {seconds:.1f} s compute, {wall:.1f} s wall  {res.stdout.strip()}")
    return seconds


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--model", default="best", help="best (default) or a psi_pretrain run ID")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reconstruct import model_run

    from cpikan.psi.synth import WaferSpec, write_dataset

    model = model_run(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_dataset(WaferSpec(args.size, args.size, seed=5, noise=0.01), Path(tmp) / "synth",
                            progress=False) / "buckets.npy"  # (16, H, W) uint16
        threads = max(1, (os.cpu_count() or 1) // args.procs)
        t1 = run(1, src, Path(tmp) / "one", model, threads)
        tn = run(args.procs, src, Path(tmp) / "many", model, threads)
        tp = run(0, src, Path(tmp) / "plain", model, None)
        out = {k: Path(tmp) / k / "buckets" for k in ("one", "many", "plain")}
        same = all((out["one"] / f).read_bytes() == (out["many"] / f).read_bytes()
                   for f in ("height.npy", "mask.npy", "height.tif"))
        diff = float(np.abs(np.load(out["plain"] / "height.npy") - np.load(out["many"] / "height.npy")).max())
    print(f"identical={int(same)} speedup={t1 / tn:.2f} speedup_vs_plain={tp / tn:.2f} seconds_1={t1:.1f} "
          f"seconds_{args.procs}={tn:.1f} seconds_plain={tp:.1f} max_diff_vs_plain_um={diff:.1e} "
          f"threads_per_process={threads} mpix={args.size**2 / 1e6:.1f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
