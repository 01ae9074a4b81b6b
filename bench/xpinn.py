"""Domain-decomposed training (XPINN) across processes, against the single-domain solve.

    torchrun --nproc-per-node 2 bench/xpinn.py [--parts 2] [--seed 0]
    .venv/bin/python bench/xpinn.py            # one process: no parallel speed-up to measure

The problem is Helmholtz 2-D (docs/domain.md §2, u = sin(πx)·sin(4πy)), cut into ``--parts``
strips along x, one Scaled-cPIKAN per strip, coupled by value and normal-derivative gaps on
the interfaces (``cpikan.decomposition``): Adam with the interface values exchanged every
step, then joint Levenberg–Marquardt steps solved by Woodbury (each process factors its own
strips; one small capacitance system is all-reduced).

Three solves, all float64, same collocation points (the problem's, from the same seed):
1. the XPINN on every process of the world (timed from a barrier to a barrier);
2. rank 0 alone with every core: the same XPINN in one process, the speed-up's baseline;
3. rank 0 alone: the single-domain solve, the ``helmholtz2d`` preset (one [16, 16] degree-10
   network, 3344 parameters against the strips' 2 × 792; Adam 1000 + LM 150 steps), the
   accuracy reference. The XPINN takes 500 LM steps: each costs ~8× less (cubic in the
   strip's parameters).
The last line: ``rel_l2=… rel_l2_single=… rel_l2_one_process=… seconds=… seconds_one_process=…
seconds_single=… speedup=… speedup_vs_single=… processes=… ok=…``; speedup = seconds of 2 ÷
seconds of 1, and ok when rel_l2 ≤ 2 × rel_l2_single (issue 18). Exits 1 when not ok.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

import torch

from cpikan import distributed
from cpikan.arguments import ArgumentParser
from cpikan.decomposition import XPINN, XPINNConfig
from cpikan.distributed import Shard
from cpikan.experiment import n_parameters, run_pinn
from cpikan.pde import make_problem
from cpikan.presets import PRESETS

POINTS = PRESETS["helmholtz2d"].problem_kwargs


def xpinn(config: XPINNConfig, shard: Shard) -> tuple[dict[str, float], float]:
    problem = make_problem("helmholtz2d", **POINTS)
    model = XPINN(problem, config, shard)
    distributed.barrier() if shard.world > 1 else None
    t0 = time.perf_counter()
    metrics = model.fit()
    distributed.barrier() if shard.world > 1 else None
    return metrics, time.perf_counter() - t0


def single(seed: int) -> tuple[dict[str, float], float, int]:
    """The helmholtz2d preset: the project's tuned single-domain solve."""
    preset = PRESETS["helmholtz2d"]
    cfg = replace(preset, train=replace(preset.train, seed=seed))
    t0 = time.perf_counter()
    result, model, _ = run_pinn(cfg)
    return result.metrics, time.perf_counter() - t0, n_parameters(model)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--hidden", default="8,8", help="each strip's hidden widths")
    ap.add_argument("--degree", type=int, default=8)
    ap.add_argument("--adam-steps", type=int, default=1000)
    ap.add_argument("--lm-steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = XPINNConfig(parts=args.parts, axis=0, hidden=tuple(int(h) for h in args.hidden.split(",")),
                         degree=args.degree, adam_steps=args.adam_steps, lm_steps=args.lm_steps,
                         seed=args.seed)
    torch.manual_seed(args.seed)
    shard = distributed.init_from_env()
    metrics, seconds = xpinn(config, shard)
    if not shard.leader:
        distributed.finish()
        return 0
    out = sys.stderr
    print(f"xpinn   processes={shard.world} parts={config.parts} rel_l2={metrics['rel_l2']:.3e} "
          f"interface_max_gap={metrics['interface_max_gap']:.1e} seconds={seconds:.1f}", file=out)
    torch.set_num_threads(os.cpu_count() or 1)
    if shard.world > 1:
        one, seconds_one = xpinn(config, Shard())
        print(f"xpinn   processes=1 rel_l2={one['rel_l2']:.3e} seconds={seconds_one:.1f} "
              f"(threads={torch.get_num_threads()})", file=out)
    else:
        one, seconds_one = metrics, seconds
    ref, seconds_single, n_single = single(args.seed)
    print(f"single  params={n_single} rel_l2={ref['rel_l2']:.3e} seconds={seconds_single:.1f}", file=out)
    ok = metrics["rel_l2"] <= 2.0 * ref["rel_l2"]
    print(f"rel_l2={metrics['rel_l2']:.3e} rel_l2_single={ref['rel_l2']:.3e} "
          f"rel_l2_one_process={one['rel_l2']:.3e} seconds={seconds:.0f} seconds_one_process={seconds_one:.0f} "
          f"seconds_single={seconds_single:.0f} speedup={seconds_one / seconds:.2f} "
          f"speedup_vs_single={seconds_single / seconds:.2f} processes={shard.world} ok={int(ok)}")
    distributed.finish()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
