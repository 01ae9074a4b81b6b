"""A model the user brings: ``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE``, plus weights.

The callable may be given literal arguments, so a class that needs them is named as it is
built: ``monai.networks.nets:BasicUNet(spatial_dims=2, in_channels=16, out_channels=1)``.
Only literals (numbers, strings, tuples, lists, dicts, True/False/None) are read, never
evaluated; the reference string is what a run records, so a replay builds the same model.

The callable is the user's own code, named on their own command line, so importing it is no
more than running their script. Weights come as safetensors (a flat, typed format whose
reading cannot run code), never as a pickle. Models stored in MLflow stay restricted to the
project's own builders (:mod:`tracking.models`): a shared store must not run code.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def is_factory(ref: str) -> bool:
    """Whether ``ref`` names a callable (``MODULE:CALLABLE``) rather than a run or a keyword."""
    return ":" in ref


#: WHERE:NAME or WHERE:NAME(ARGS); WHERE takes the last ':' that leaves a name (and a call) after it
REF = re.compile(r"(.+):([A-Za-z_][\w.]*)\s*(\(.*\))?\s*", re.DOTALL)


def split_ref(ref: str, field: str = "model") -> tuple[str, str, tuple, dict]:
    """``'unet.py:UNet(16, out_channels=1)'`` → ('unet.py', 'UNet', (16,), {'out_channels': 1})."""
    m = REF.fullmatch(ref)
    if not m:
        raise ValueError(f"{field}: expected MODULE:CALLABLE or FILE.py:CALLABLE, got {ref!r}")
    where, name, args = m.group(1), m.group(2), m.group(3)
    if args is None:
        return where, name, (), {}
    try:
        call = ast.parse(f"f{args}", mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        values = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
        if len(kwargs) != len(call.keywords):
            raise ValueError("**")
    except (SyntaxError, ValueError, AssertionError):
        raise ValueError(f"{field}: {ref!r}: arguments must be literals (numbers, strings, tuples, lists, dicts, "
                         "True/False/None), as in UNet(in_channels=16, features=(32, 64))") from None
    return where, name, values, kwargs


def _import(where: str, name: str, ref: str, field: str) -> Any:
    """The callable ``name`` in ``where`` (a module or a .py file); ValueError naming
    ``field``, ``ref`` and the cause otherwise."""
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.is_file():
                raise ValueError(f"{field}: {where}: no such file")
            spec = importlib.util.spec_from_file_location(f"_user_model_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            obj: Any = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = obj  # dataclasses and pickling-free introspection look it up
            spec.loader.exec_module(obj)
        else:
            obj = importlib.import_module(where)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise ValueError(f"{field}: {ref!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    if not callable(obj):
        raise ValueError(f"{field}: {ref!r} is a {type(obj).__name__}, not a callable returning the model")
    return obj


def build(ref: str, weights: str | Path | None = None, field: str = "model") -> nn.Module:
    """Call the factory ``ref`` names with its literal arguments, load ``weights``
    (safetensors) into its result, eval mode. The call is seeded (torch's global generator
    as it was, afterwards): whatever it initialises at random, every build (a replay's too)
    gets the same."""
    where, name, args, kwargs = split_ref(ref, field)
    factory = _import(where, name, ref, field)
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
        convert = "s.save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')"  # tensors only
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


def source_file(ref: str) -> Path | None:
    """The file that defines the factory (for provenance), when there is one."""
    where = split_ref(ref)[0]
    if where.endswith(".py"):
        return Path(where).resolve()
    spec = importlib.util.find_spec(where)
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None
