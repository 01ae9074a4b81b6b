"""A model the user brings: ``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE`` (read by
:mod:`cpikan.refs`, literal arguments and all), plus weights.

Weights come as safetensors (a flat, typed format whose reading cannot run code), never as
a pickle. Models stored in MLflow stay restricted to the project's own builders
(:mod:`tracking.models`): a shared store must not run code.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpikan.refs import resolve, split_ref

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def build(ref: str, weights: str | Path | None = None, field: str = "model") -> nn.Module:
    """Call the factory ``ref`` names with its literal arguments, load ``weights``
    (safetensors) into its result, eval mode. The call is seeded (torch's global generator
    as it was, afterwards): whatever it initialises at random, every build (a replay's too)
    gets the same."""
    where, name, args, kwargs = split_ref(ref, field)
    factory = resolve(where, name, ref, field)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = factory(*args, **kwargs)
    except Exception as exc:  # the user's code: whatever it raises, say where it came from
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"{field}: {ref} failed ({type(exc).__name__}: {first})"
                         + ("" if args or kwargs else f"; give its arguments: {name}(in_channels=16, …)")) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{field}: {ref} returned a {type(model).__name__}; expected a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a safetensors state dict into ``model``, exactly (every key, every shape).

    A wrapper's prefix (``module.`` from DistributedDataParallel, ``model.`` from this
    project's artifacts, ``net.`` from a Lightning module holding the network, or several of
    them) is dropped when the keys under it are exactly the model's; keys beside them are
    then the wrapper's own (``n_averaged`` of an ``AveragedModel``, a loss's weights). Two
    copies of the network in one file (``net.`` and ``ema.``) are refused: which one is meant
    is the user's to say."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        # tensors only; a training checkpoint's state dict taken out of it (Lightning's 'state_dict', …)
        convert = ("d = torch.load('IN', weights_only=True); "
                   "d = next((d[k] for k in ('state_dict', 'model_state_dict', 'model') if k in d), d); "
                   "s.save_file({k: v.contiguous() for k, v in d.items()}, 'OUT.safetensors')")
        raise ValueError(f"weights: {path} looks like a pickle, which is never loaded (it can run code); convert "
                         f"it once: python -c \"import torch, safetensors.torch as s; {convert}\"")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"weights: {path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    own = set(model.state_dict())
    state = _under_prefix(state, own, path)
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f", … ({len(keys)} in all)" if len(keys) > 3 else "")

        parts = ([f"missing {few(missing)}"] if missing else []) + ([f"unexpected {few(unexpected)}"] if unexpected else [])
        raise ValueError(f"weights: {path} does not fit {type(model).__name__}: {'; '.join(parts)}")
    mine = model.state_dict()
    for k, v in state.items():
        if tuple(v.shape) != tuple(mine[k].shape):
            raise ValueError(f"weights: {path}: {k} has shape {tuple(v.shape)}, "
                             f"{type(model).__name__} expects {tuple(mine[k].shape)}")
    model.load_state_dict(state, strict=True)


def _under_prefix(state: dict[str, Any], own: set[str], path: Path) -> dict[str, Any]:
    """``state`` itself if its keys are the model's, else the one prefix under which they are."""
    if set(state) == own:
        return state
    counts: Counter[str] = Counter()
    for k in state:
        parts = k.split(".")
        counts.update(".".join(parts[:i]) + "." for i in range(1, len(parts)))
    found = []
    for prefix, n in counts.items():
        if n >= len(own):
            under = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(under) == own:
                found.append((prefix, under))
    if len(found) > 1:
        raise ValueError(f"weights: {path} holds the network {len(found)} times (under "
                         f"{', '.join(sorted(p for p, _ in found))}); save the copy to use on its own")
    return found[0][1] if found else state


