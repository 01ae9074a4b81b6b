"""Whole-wafer cPIKAN patch refinement: seams with and without the interface term.

A synthetic wafer (seeded, with noise) is reconstructed classically, then refined by a grid
of overlapping Scaled-cPIKAN patches (cpikan.psi.patches) three times: with the interface
term (values and gradients agree on overlaps; Adam, then the joint Levenberg–Marquardt
finish), without it through the same pipeline (every patch alone, LM included), and with
Adam alone (every patch alone, no LM: its seams are smaller than the independent LM's, whose
fixed samples let neighbours drift apart). For each it prints the seam on every overlap
pixel (RMS relative to the RMS height: the platform's seam KPI; RMS and max in nm), the height
error against the truth and the seconds, and ends with
``seam_l2=… seam_l2_without=… ratio=… rel_l2=… rel_l2_start=… seconds=…``, where "without"
is the smaller seam of the two runs without the term. Exits 1 when seam_l2 > 1e-4 or the
interface term lowers it less than 10× (issue 18).

    .venv/bin/python bench/patch_refine.py [--size 1024] [--grid 4x4] [--interface-weight W]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np
import torch

from cpikan.arguments import ArgumentParser
from cpikan.psi import classical, physics, synth
from cpikan.psi.patches import PatchRefineConfig, refine_wafer


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--grid", default="4x4", help="patch rows x cols")
    ap.add_argument("--overlap", type=int, default=PatchRefineConfig.overlap)
    ap.add_argument("--interface-weight", type=float, default=PatchRefineConfig.interface_weight)
    ap.add_argument("--steps", type=int, default=PatchRefineConfig.steps, help="Adam steps")
    ap.add_argument("--lm-steps", type=int, default=PatchRefineConfig.lm_steps)
    ap.add_argument("--noise", type=float, default=0.05, help="Gaussian σ as a fraction of B")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--terraces", type=int, default=0, help="sharp terrace steps (a smooth patch cannot follow them)")
    ap.add_argument("--cones", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, _, cols = args.grid.partition("x")
    try:
        cfg = PatchRefineConfig(rows=int(rows), cols=int(cols), overlap=args.overlap, steps=args.steps,
                                lm_steps=args.lm_steps, interface_weight=args.interface_weight, seed=args.seed)
    except ValueError:
        ap.error(f"--grid: expected ROWSxCOLS such as 4x4, got {args.grid!r}")
    spec = synth.WaferSpec(height=args.size, width=args.size, seed=args.seed, steps=args.terraces, cones=args.cones)
    truth = synth.Wafer(spec).full().astype(np.float64)
    buckets = physics.quantize(physics.add_noise(physics.render(truth), args.noise,
                                                 rng=np.random.default_rng(args.seed)), 16)
    start, mask = classical.reconstruct(buckets)

    def rel(h: np.ndarray) -> float:
        return float(np.linalg.norm((h - truth)[mask]) / np.linalg.norm(truth[mask]))

    print(f"wafer {args.size}²  patches {cfg.rows}×{cfg.cols}  overlap {cfg.overlap} px  steps {cfg.steps}  "
          f"lm steps {cfg.lm_steps}  valid {mask.mean():.4f}  classical rel_l2 {rel(start):.3e}")
    print(f"{'run':<22}{'seam_l2':>10}{'seam nm':>9}{'max nm':>8}{'rel_l2':>10}{'seconds':>8}")
    runs = {f"interface w={cfg.interface_weight:g}": cfg, "alone": replace(cfg, interface_weight=0.0)}
    if cfg.lm_steps:
        runs["alone, Adam only"] = replace(cfg, interface_weight=0.0, lm_steps=0)
    got = {}
    for name, run in runs.items():
        out, rep = refine_wafer(buckets, start, run)
        got[name] = (rep, rel(out))
        print(f"{name:<22}{rep['seam_l2']:>10.2e}{rep['seam_rms_um'] * 1e3:>9.3f}{rep['seam_max_um'] * 1e3:>8.3f}"
              f"{got[name][1]:>10.3e}{rep['seconds']:>8.0f}", flush=True)
    with_, rel_l2 = next(iter(got.values()))
    without = min((rep for rep, _ in list(got.values())[1:]), key=lambda rep: rep["seam_l2"])
    ratio = without["seam_l2"] / max(with_["seam_l2"], 1e-300)
    ok = with_["seam_l2"] <= 1e-4 and ratio >= 10
    print(f"seam_l2={with_['seam_l2']:.2e} seam_l2_without={without['seam_l2']:.2e} ratio={ratio:.1f} "
          f"rel_l2={rel_l2:.3e} rel_l2_start={rel(start):.3e} seconds={with_['seconds']:.0f} ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
