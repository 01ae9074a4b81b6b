"""Method options against the preset, same problem, same seeds (issue 18).

    .venv/bin/python bench/methods.py [--problem diffusion] [--seeds 0,1,2] [--methods preset,config,…]
                                      [--set train.lm_steps=300 …] [--jobs 2]

Each option of ``cpikan.methods`` (ConFIG, LRA, RAR-D, Fourier features, transfer learning)
is the preset with one change; ``transfer`` starts from the same model trained on a nearby
problem (diffusion: D = 0.05 instead of 0.1; its source training is timed apart and not
counted in its seconds). One row per option: median and worst relative L2 over the seeds,
median seconds, and both as ratios to the preset's (ratio < 1: better). ``--set`` changes
the preset for every row (dotted keys into the PINN config, JSON values). The last line:
``preset_rel_l2=… <method>_ratio=… … seeds=… seconds=…``. Exits 1 when a run's error is not
finite.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

import torch
from tqdm import tqdm

from cpikan.arguments import ArgumentParser
from cpikan.experiment import PINNConfig, run_pinn
from cpikan.methods import METHODS, applicable, apply, source_weights
from cpikan.presets import PRESETS


def with_settings(cfg: PINNConfig, settings: list[str]) -> PINNConfig:
    d = json.loads(cfg.to_json())
    for item in settings:
        key, _, value = item.partition("=")
        node = d
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        if leaf not in node:
            raise SystemExit(f"--set: unknown key {key!r}")
        node[leaf] = json.loads(value)
    return PINNConfig.from_dict(d)


def one(cfg: PINNConfig, method: str) -> tuple[float, float, float]:
    """(rel_l2, seconds, source seconds) of one option on one seed, on one thread."""
    torch.set_num_threads(1)
    pinn = apply(cfg, method)
    init_state, source_seconds = source_weights(pinn) if method == "transfer" else (None, 0.0)
    t0 = time.perf_counter()
    result, _, _ = run_pinn(pinn, init_state=init_state)
    return result.metrics["rel_l2"], time.perf_counter() - t0, source_seconds


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="diffusion", choices=sorted(PRESETS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each (seconds compare "
                                                             "fairly only while every core runs one)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"--methods: unknown {unknown}; allowed: {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if "preset" not in methods:
        methods.insert(0, "preset")
    seeds = [int(s) for s in args.seeds.split(",")]
    base = with_settings(PRESETS[args.problem], args.set)
    why_not = applicable(base)
    for m in [m for m in methods if why_not[m]]:  # options that do not apply: named, left out
        print(f"skipped {m}: {why_not[m]}", file=sys.stderr)
        methods.remove(m)
    t0 = time.perf_counter()
    tasks = [(replace(base, train=replace(base.train, seed=seed)), m) for seed in seeds for m in methods]
    rows: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
    with tqdm(total=len(tasks), desc="methods", unit="run", file=sys.stderr) as bar, \
            ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(one, cfg, m): m for cfg, m in tasks}
        for f in as_completed(futures):
            rows[futures[f]].append(f.result())
            bar.update(1)
    med = {m: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for m, rs in rows.items()}
    p_err, p_sec = med["preset"]
    print(f"{args.problem}, seeds {seeds}, 1 thread per run, {args.jobs} at once", file=sys.stderr)
    print(f"{'method':<21} {'rel_l2 (median)':>15} {'worst':>9} {'seconds':>8} {'error ratio':>11} "
          f"{'time ratio':>10}  what", file=sys.stderr)
    for m, rs in rows.items():
        err, sec = med[m]
        print(f"{m:<21} {err:15.3e} {max(r[0] for r in rs):9.2e} {sec:8.1f} {err / p_err:11.2f} "
              f"{sec / p_sec:10.2f}  {METHODS[m].summary}", file=sys.stderr)
    bad = [m for m, rs in rows.items() if not all(math.isfinite(r[0]) for r in rs)]
    ratios = " ".join(f"{m}_ratio={med[m][0] / p_err:.2f}" for m in methods if m != "preset")
    print(f"preset_rel_l2={p_err:.3e} {ratios} seeds={len(seeds)} seconds={time.perf_counter() - t0:.0f} "
          f"ok={int(not bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
