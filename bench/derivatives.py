"""Training-step time: our jet derivatives vs the published style (nested autograd, clone).

Both models hold the same weights and see the same points; the script checks that the
losses agree to 1e-6 (relative) at every step, then prints the per-step times and their
ratio. Exits 1 if the losses differ or our step is not at least 2× faster.

    .venv/bin/python bench/derivatives.py [--steps 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from cpikan.arguments import ArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published_cpikan import PublishedCPIKAN  # noqa: E402

from cpikan import diff  # noqa: E402
from cpikan.experiment import ModelConfig, PINNConfig, build  # noqa: E402
from cpikan.losses import Balancer  # noqa: E402

SETUPS = {
    # the published Scaled-cPIKAN diffusion setup (docs/domain.md §2)
    "diffusion": PINNConfig(
        "diffusion", {"n_interior": 2000, "n_boundary": 400, "n_initial": 400, "sampler": "uniform"},
        ModelConfig(hidden=(8, 8), degree=5),
    ),
    # the helmholtz2d setup of bench/pde_accuracy.py
    "helmholtz2d": PINNConfig(
        "helmholtz2d", {"n_interior": 2500, "n_boundary": 400}, ModelConfig(hidden=(16, 16), degree=10),
    ),
}
WEIGHTS = {"diffusion": {"pde": 0.01, "ic": 1.0, "bc": 1.0}, "helmholtz2d": {"pde": 1.0, "bc": 10.0}}


def time_steps(model, problem, batch, deriv_fn, weights, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bal = Balancer(weights)
    losses, times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = bal.combine(problem.loss_terms(model, batch, deriv_fn))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return losses, times


def run_setup(name: str, steps: int) -> tuple[float, float, float, float]:
    cfg = SETUPS[name]
    problem, ours = build(cfg)
    ref = PublishedCPIKAN(ours)
    batch = problem.sample(torch.Generator().manual_seed(0)).to(torch.float32)
    w = WEIGHTS[name]
    # Interleave short rounds so machine noise hits both sides alike. Each round starts both
    # models from the same weights; their first losses (identical parameters) must agree.
    ours_t, ref_t, rels = [], [], []
    rounds = 5
    for _ in range(rounds):
        with torch.no_grad():
            for mine, theirs in zip(ours.layers, ref.layers):
                theirs.cheby_coeffs.copy_(mine.coeffs.permute(1, 0, 2))
        ol, t = time_steps(ours, problem, batch, None, w, steps // rounds)
        ours_t += t
        rl, t = time_steps(ref, problem, batch, diff.derivatives_autograd, w, steps // rounds)
        ref_t += t
        rels.append(abs(ol[0] - rl[0]) / abs(rl[0]))
    return statistics.median(ours_t), statistics.median(ref_t), max(rels), ol[0]


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    figures, ok = [], True
    print(f"{'setup':<12} {'ours ms/step':>13} {'published ms/step':>18} {'loss rel diff':>14} {'speedup':>8}")
    for name in SETUPS:
        ours, ref, rel, loss0 = run_setup(name, args.steps)
        speed = ref / ours
        ok &= rel < 1e-6 and speed >= 2.0
        print(f"{name:<12} {ours * 1e3:13.2f} {ref * 1e3:18.2f} {rel:14.2e} {speed:8.2f}")
        figures += [f"{name}_ms={ours * 1e3:.2f}", f"{name}_published_ms={ref * 1e3:.2f}",
                    f"{name}_loss_rel_diff={rel:.1e}", f"{name}_speedup={speed:.2f}"]
    print(" ".join(figures))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
