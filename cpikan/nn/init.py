"""Weight initialisations chosen by name (the studies search over them)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

INITS = ("kaiming", "xavier", "orthogonal", "small_random")


def check_init(name: str) -> str:
    if name not in INITS:
        raise ValueError(f"init: unknown initialisation {name!r}; allowed: {', '.join(INITS)}")
    return name


def init_weight(weight: Tensor, name: str, fan_in: int, fan_out: int) -> None:
    """Initialise ``weight`` in place (under no_grad) by ``name``.

    ``fan_in``/``fan_out`` are given explicitly because a Chebyshev coefficient tensor
    (out, in, K+1) has fan-in in·(K+1), which torch's own fan computation gets wrong.
    """
    check_init(name)
    with torch.no_grad():
        if name == "xavier":
            weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        elif name == "kaiming":
            weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        elif name == "orthogonal":
            flat = torch.empty(weight.shape[0], weight[0].numel(), dtype=weight.dtype)
            torch.nn.init.orthogonal_(flat)
            weight.copy_(flat.view_as(weight))
        else:  # small_random
            weight.uniform_(-0.01, 0.01)
