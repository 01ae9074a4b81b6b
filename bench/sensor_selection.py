"""Sensor selection time from 32² to 2048² grids, and the python-sensors peer side by side.

For each grid, a family of Kovasznay flows (u field, Re from 20 to 80, float32 snapshots)
→ POD basis (randomised SVD past ``cpikan.sensors.pod.EXACT_LIMIT``) → K sensors by QR
pivoting. ``s_N`` is the seconds of basis + selection (making the snapshots is not counted).
On the --peer-grid, python-sensors' SSPOR (its SVD basis and QR optimiser, on the same
centred snapshots, the same K and rank) is timed and both reconstruct held-out flows from
noisy readings (1 % of the field's range; least squares, median over 5 noise draws).
``sspor_ratio`` = our seconds ÷ SSPOR's (≤ 1: at least as fast). Exits 1 if 512² takes
over 6 s, 2048² over 60 s, or we are slower or less accurate than SSPOR.

    .venv/bin/python bench/sensor_selection.py [--k 12] [--rank 10] [--grids 32,128,512,2048]
    (SSPOR needs the bench extra: pip install -e '.[bench]')
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from cpikan.arguments import ArgumentParser
from cpikan.sensors import flows, place, pod_basis, reconstruct

LIMITS = {512: 6.0, 2048: 60.0}


def family(n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    snaps, grid, _ = flows.snapshots("kovasznay", n, count, "u", dtype=np.float32)
    x, y = grid.mesh()
    test = np.stack([flows.kovasznay(x, y, re)[0].ravel() for re in (27.3, 51.7, 73.9)]).astype(np.float64)
    return snaps, test


def ours(snaps: np.ndarray, k: int, rank: int) -> tuple[float, object, object]:
    t0 = time.perf_counter()
    basis = pod_basis(snaps, rank)
    placement = place(basis, k)
    return time.perf_counter() - t0, basis, placement


def noisy(test: np.ndarray, idx: np.ndarray, draw: int) -> np.ndarray:
    span = test.max() - test.min()
    return test[:, idx] + 0.01 * span * np.random.default_rng(draw).standard_normal((len(test), len(idx)))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def peer(snaps: np.ndarray, test: np.ndarray, k: int, rank: int) -> tuple[float, float] | None:
    """(seconds, median error) for python-sensors' SSPOR on the same centred data."""
    try:
        import pysensors as ps
    except ImportError:
        return None
    mean = snaps.mean(0, dtype=np.float64).astype(snaps.dtype)
    centred = snaps - mean
    t0 = time.perf_counter()
    model = ps.SSPOR(basis=ps.basis.SVD(n_basis_modes=rank, random_state=0), n_sensors=k)
    model.fit(centred, quiet=True, seed=0)
    seconds = time.perf_counter() - t0
    idx = np.asarray(model.get_selected_sensors())
    errs = [rel(model.predict((noisy(test, idx, d) - mean[idx]), method="unregularized") + mean, test)
            for d in range(5)]
    return seconds, float(np.median(errs))


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--snapshots", type=int, default=40)
    ap.add_argument("--grids", default="32,128,512,2048")
    ap.add_argument("--peer-grid", type=int, default=512)
    args = ap.parse_args()
    figures: dict[str, str] = {}
    ok = True
    for n in (int(g) for g in args.grids.split(",")):
        snaps, test = family(n, args.snapshots)
        ours(snaps[:, :1024], args.k, min(args.rank, args.snapshots))  # warm-up: LAPACK's first call
        seconds, basis, placement = ours(snaps, args.k, args.rank)
        idx = np.asarray(placement.indices)
        err = float(np.median([rel(reconstruct(basis, placement, noisy(test, idx, d)), test) for d in range(5)]))
        print(f"{n:>5}²  basis+QR {seconds:7.2f} s  rank {basis.rank}  energy {basis.energy:.8f}  "
              f"error {err:.2e} (K={args.k}, 1 % noise)")
        figures[f"s_{n}"] = f"{seconds:.2f}"
        ok = ok and seconds <= LIMITS.get(n, float("inf"))
        if n == args.peer_grid:
            figures["err"] = f"{err:.2e}"
            found = peer(snaps, test, args.k, args.rank)
            if found is None:
                print("  python-sensors not installed (pip install -e '.[bench]'): no side-by-side")
                ok = False
            else:
                t_peer, e_peer = found
                print(f"  SSPOR    {t_peer:7.2f} s  error {e_peer:.2e}")
                figures.update(sspor_ratio=f"{seconds / t_peer:.2f}", err_sspor=f"{e_peer:.2e}")
                ok = ok and seconds <= t_peer and err <= e_peer * 1.0001
        del snaps
    print(" ".join(f"{k}={v}" for k, v in figures.items()) + f" ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
