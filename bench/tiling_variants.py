"""Which inference variant runs the production tiles fastest at equal error: a table.

Times one tile of the command's size (``studies.reconstruct.tile_plan`` for the model) through
the PSI model as it is (float32), with ``channels_last`` memory format, under bf16 autocast
on the CPU, and through ``torch.compile`` (compile time printed apart), and compares each
output with float32's. A variant is kept only if it is faster *and* its max relative error
stays ≤ 1e-5 (what crop-mode tiling promises). The last line names the winner.

    .venv/bin/python bench/tiling_variants.py [--model best|RUN_ID|random] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cpikan.arguments import ArgumentParser

TOLERANCE = 1e-5


class ChannelsLast(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last)).contiguous()


class Bf16Autocast(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="best", help="best (default), a psi_pretrain run ID, or random")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cpikan.psi import physics
    from cpikan.psi.model import PSINet
    from cpikan.psi.synth import Wafer, WaferSpec
    from studies.reconstruct import ReconstructConfig, tile_plan

    if args.model == "random":
        torch.manual_seed(0)
        model = PSINet(width=8, depth=3)
    else:
        from reconstruct import model_run

        from studies.reconstruct import load_model

        model = load_model(model_run(args.model))[0]
    model.eval()
    tile = int(tile_plan(model, 16, ReconstructConfig())["tile"])
    buckets = physics.quantize(physics.render(Wafer(WaferSpec(tile, tile, seed=6)).full()), 16)
    x = torch.from_numpy(buckets.astype("float32"))[None]
    rows = []
    with torch.inference_mode():
        t_ref, ref = timed(lambda: model(x), args.repeats)
        scale = float(ref.abs().max())
        variants: dict[str, nn.Module] = {"channels_last": ChannelsLast(_copy(model)),
                                          "bf16_autocast": Bf16Autocast(model)}
        for name, wrapped in variants.items():
            t, y = timed(lambda w=wrapped: w(x), args.repeats)
            rows.append((name, t, float((y - ref).abs().max()) / scale, 0.0))
    t0 = time.perf_counter()
    compiled = torch.compile(_copy(model), dynamic=False)
    with torch.inference_mode():
        y = compiled(x)
        first = time.perf_counter() - t0
        t, y = timed(lambda: compiled(x), args.repeats)
    rows.append(("torch_compile", t, float((y - ref).abs().max()) / scale, first - t))
    print(f"tile {tile} × {tile}, 16 channels, {torch.get_num_threads()} threads; float32 reference {t_ref:.3f} s")
    print(f"{'variant':<15}{'seconds':>9}{'speedup':>9}{'max_rel_err':>13}{'compile_s':>11}  kept")
    best_name, best_t = "float32", t_ref
    for name, t, err, compile_s in rows:
        kept = t < best_t and err <= TOLERANCE
        if kept:
            best_name, best_t = name, t
        print(f"{name:<15}{t:>9.3f}{t_ref / t:>9.2f}{err:>13.1e}{compile_s:>11.1f}  {'yes' if kept else 'no'}")
    figures = {f"speedup_{n}": f"{t_ref / t:.2f}" for n, t, _, _ in rows}
    figures.update({f"err_{n}": f"{e:.1e}" for n, _, e, _ in rows})
    print(" ".join(f"{k}={v}" for k, v in figures.items()) + f" best={best_name} tile={tile}")
    return 0


def _copy(model: nn.Module) -> nn.Module:
    """A copy, so the variants do not share memory formats."""
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    sys.exit(main())
