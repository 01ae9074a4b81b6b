"""The guarded flow case: a physics regression check fast enough for every CI run.

Seed 003's regression protocol: establish a baseline before a change, and after it check
that the physics still holds. The baseline here is a reference model — Kovasznay flow (Re
40, noise-free sensors, Dirichlet data on three sides and an outflow (Neumann) condition on
the fourth) trained from scratch by the current solver until every red line of the guard
holds — stored as safetensors with its config (``reference/kovasznay.safetensors``). The
guarded case knocks its weights off (1 % relative noise: every boundary and residual line
goes red, momentum 0.3) and trains it back ``GUARD_STEPS`` Levenberg–Marquardt steps under
the code as it is now (~10 s), then runs the guard: a change to the residuals, their
derivatives, the Jacobian, the LM step or the guard that breaks the physics leaves the model
off the flow and fails a red line (a dropped viscous term: momentum 0.97, tests). Trained
from scratch, no case on this machine met the red lines within 60 s (the Dirichlet error
was still 1e-3 after 100 steps); the reference takes 600 steps, 323 s:
``bench/flow_inverse.py --save-reference``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from cpikan.config import canonical_json
from cpikan.sensors.inverse import FlowInverseConfig, InverseResult, solve

REFERENCE = Path(__file__).with_name("reference") / "kovasznay.safetensors"
GUARD_STEPS = 20
PERTURB = 1e-2

#: the case the reference is trained on (``lm_steps`` from scratch)
GUARDED = FlowInverseConfig(noise=0.0, kept_sides="bottom,top,left", neumann_sides="right", n_interior=24,
                            width=10, n_boundary=40, lm_steps=600, physics_weight=1e3, boundary_weight=1e3)


def save_reference(model: nn.Module, re: float, cfg: FlowInverseConfig, path: Path = REFERENCE) -> Path:
    """Write the model's tensors and log Re, with the config, to ``path`` (temporary name, then rename)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors["log_re"] = torch.tensor([math.log(re)], dtype=torch.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"config": canonical_json(cfg), "format": "1"})
    tmp.replace(path)
    return path


def load_reference(path: Path = REFERENCE) -> tuple[FlowInverseConfig, dict[str, Tensor]]:
    """The config and the starting tensors (``solve``'s ``start``); tensors only, nothing unpickled."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in meta:
        raise ValueError(f"reference {path}: no config in its metadata; rebuild it with "
                         "bench/flow_inverse.py --save-reference")
    return FlowInverseConfig(**json.loads(meta["config"])), tensors


def guarded_case(steps: int = GUARD_STEPS, path: Path = REFERENCE, perturb: float = PERTURB) -> InverseResult:
    """Knock the reference model's weights off (relative noise ``perturb``, seeded), train it
    back ``steps`` LM steps, and guard it."""
    cfg, start = load_reference(path)
    gen = torch.Generator().manual_seed(0)
    start = {k: v * (1 + perturb * torch.randn(v.shape, generator=gen, dtype=v.dtype)) if k != "log_re" else v
             for k, v in start.items()}
    _, result = solve(replace(cfg, lm_steps=steps), start=start)
    return result
