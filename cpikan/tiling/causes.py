"""Why a model's tiles cannot equal its whole-image output, named for the user.

The probe (:mod:`cpikan.tiling.geometry`) measures *that* a model is not shift-equivariant or
wraps the image's far side into its edges; this module says *what* does it: the modules
found by type (per-image normalisation, ``align_corners=True`` upsampling, attention,
adaptive pooling, circular padding), then what one forward pass was seen to run, so a
function with no module (``x.mean((2, 3))``, ``F.interpolate(align_corners=True)``,
``torch.fft``, ``torch.roll``, ``F.scaled_dot_product_attention``) is named too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def param_dtype(model: nn.Module) -> torch.dtype:
    """The floating type the model computes in: its first real floating-point parameter's
    (a Fourier layer's complex weights come first in some models)."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


#: what an operator seen in a forward pass says about a model that tiles cannot match
_RANDOM = ("native_dropout", "bernoulli", "bernoulli_", "normal", "normal_", "rand", "randn", "rand_like",
           "randn_like", "randint", "multinomial", "uniform_", "exponential_")
_REDUCTIONS = ("mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean", "logsumexp")


class _Ops(TorchDispatchMode):
    """What one forward pass runs that sees the whole image or wraps around it, by kind."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, str] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.__name__.split(".")[0]
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in _RANDOM:
            self.found["random"] = f"randomness in forward ({name}: dropout left on while predicting, or sampled noise)"
        elif name.startswith("_fft"):
            self.found["fft"] = "a Fourier layer (torch.fft: global and periodic)"
        elif name == "roll":
            self.found["wrap"] = "torch.roll (wraps around)"
        elif name.startswith("_scaled_dot_product") or (  # fused, or the math path's softmax over tokens
                name in ("_softmax", "_safe_softmax") and x is not None and not (x.dim() == 4 and args[1] % 4 == 1)):
            self.found["attention"] = "attention across the image (a softmax over pixels as tokens)"
        elif "adaptive" in name and x is not None and x.dim() == 4:
            self.found["adaptive"] = "adaptive pooling to a fixed size (global: its windows grow with the image)"
        elif name in _REDUCTIONS and x is not None and x.dim() == 4 and len(args) > 1 and args[1] is not None:
            dims = {d % 4 for d in (args[1] if isinstance(args[1], list | tuple) else [args[1]])}
            if {2, 3} <= dims:
                self.found["global"] = f"a {name} over the whole image (global pooling, squeeze-and-excitation)"
        elif name in ("linspace", "arange", "grid_sampler_2d", "affine_grid_generator"):
            self.found["position"] = (f"coordinates made in forward ({name}: coordinate channels, positional "
                                      "encodings, grid_sample: they say where in the image, not what is there)")
        elif name.startswith("upsample_") and len(args) > 2 and args[2] is True:
            self.found["corners"] = "align_corners=True resampling (F.interpolate)"
        return func(*args, **(kwargs or {}))


def _ops_found(model: nn.Module, channels: int, size: int) -> dict[str, str]:
    """The operators of one forward pass that see the whole image or wrap around it, by kind."""
    x = torch.zeros(1, channels, size, size, dtype=param_dtype(model))
    try:
        with torch.no_grad(), _Ops() as ops:
            model(x)
    except Exception:  # noqa: BLE001 — only for the message: a model the mode cannot follow names nothing
        return {}
    return ops.found


def _circular_padding(model: nn.Module) -> list[str]:
    return [f"circular padding ({name}: {type(m).__name__})" for name, m in model.named_modules()
            if getattr(m, "padding_mode", None) == "circular" or "Circular" in type(m).__name__]


def suspected_cause(model: nn.Module, channels: int = 0, size: int = 64) -> str:
    """The layers that usually break shift-equivariance, by name, for the error message: the
    modules found by type, then what one forward pass was seen to run (functions too)."""
    found, kinds = [], set()
    for name, m in model.named_modules():
        if isinstance(m, nn.InstanceNorm1d | nn.InstanceNorm2d | nn.InstanceNorm3d | nn.GroupNorm | nn.LayerNorm):
            found.append(f"per-image normalisation ({name}: {type(m).__name__})")
            kinds.add("global")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats:
            found.append(f"per-batch normalisation ({name}: BatchNorm without running statistics)")
            kinds.add("global")
        elif isinstance(m, nn.Upsample) and m.align_corners:
            found.append(f"align_corners=True resampling ({name})")
            kinds.add("corners")
        elif isinstance(m, nn.MultiheadAttention):
            found.append(f"attention across the image ({name}: MultiheadAttention)")
            kinds.add("attention")
        elif type(m).__name__.startswith("Adaptive") and "Pool" in type(m).__name__:
            found.append(f"adaptive pooling ({name}: {type(m).__name__}, global)")
            kinds.add("adaptive")
    found += _circular_padding(model)
    if channels:
        ops = _ops_found(model, channels, size)
        if "random" in ops:  # the first thing to fix
            found.insert(0, ops.pop("random"))
        found += [text for kind, text in ops.items() if kind not in kinds]
    if found:
        return "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
    return ("a layer that depends on absolute position or on the image size (align_corners=True "
            "interpolation, coordinate channels, global pooling or statistics)")


def edge_cause(model: nn.Module, channels: int) -> str:
    """Why a model's output at the image's edges depends on the image's far side."""
    ops = _ops_found(model, channels, 64)
    found = _circular_padding(model) + [ops[k] for k in ("wrap", "fft") if k in ops]
    return "; ".join(found[:3]) or "something that wraps the image around (circular F.pad, torch.roll, an FFT)"
