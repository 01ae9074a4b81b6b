"""The study registry: each study declares its config dataclass, search space, objectives
and ``run(config, ctx)`` — the entry point replay re-executes by name."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpikan.config import rebuild


@dataclass(frozen=True)
class Entry:
    module: str  # registers the study when imported (lazily: `--list` and `--help` stay fast)
    description: str


#: every study by name: the one list the CLI, `--list`, the reports and the tests read
CATALOG: dict[str, Entry] = {
    "tiling_overlap_sweep": Entry("studies.tiling_sweep", "tile size × overlap × blend mode on a synthetic PSI image (Pareto: error, seams, time, memory)"),
    "psi_pretrain": Entry("studies.psi_pretrain", "train the PSI U-Net (refines the classical estimate); logged as an MLflow model"),
    "scheduler_search": Entry("studies.searches", "LR scheduler × learning rate on helmholtz1d, median pruning"),
    "init_search": Entry("studies.searches", "initialisation × Chebyshev degree on helmholtz1d and diffusion"),
    "helmholtz1d": Entry("studies.pde", "PDE benchmark: 1-D Helmholtz, k = 4π"),
    "helmholtz2d": Entry("studies.pde", "PDE benchmark: 2-D Helmholtz, a1 = 1, a2 = 4"),
    "diffusion": Entry("studies.pde", "PDE benchmark: the published Scaled-cPIKAN diffusion setup"),
    "poisson3d": Entry("studies.pde", "PDE benchmark: 3-D Poisson on the unit cube"),
    "reaction_diffusion_inverse": Entry("studies.pde", "PDE benchmark: recover D and κ from 200 noisy samples"),
    "pinn": Entry("studies.pde", "any PDE, the lab's own too: --set problem=path/to/file.py:CLASS (a cpikan.pde.Problem; docs/howto.md)"),
    "sensor_placement": Entry("studies.sensors", "K sensors by QR pivoting vs random vs uniform (vs SSPOR): linear POD estimate's error vs K and noise"),
    "multistage_search": Entry("studies.multistage", "multi-stage training: stages × width/degree × Fourier σ rule × point growth on helmholtz1d (Pareto: error, seconds)"),
    "method_search": Entry("studies.methods", "method options (ConFIG, LRA, RAR-D, Fourier features, transfer learning) vs the preset on diffusion (Pareto: error, seconds)"),
    "flow_inverse": Entry("studies.sensors", "Kovasznay or Taylor–Green flow (--set flow=…) and its Re from K sensors + Navier–Stokes (Scaled-cPIKAN, LM), physics guard per run"),
}


def names_in(module: str) -> list[str]:
    """The studies a module registers (so it need not list them again)."""
    return [n for n, e in CATALOG.items() if e.module == module]


@dataclass
class Study:
    name: str
    config_cls: type
    default: Callable[[], Any]
    space: Callable[[Any, Any], Any]  # (trial, base config) -> config for this trial
    objectives: list[tuple[str, str]]  # (metric, "minimize" | "maximize")
    entry_point: str  # "module:function", recorded on every run for replay
    pruner: str = "none"  # "median" | "none"
    default_trials: int = 8
    #: run once by the command before its workers start (what every trial shares, made once)
    prepare: Callable[[Any], object] | None = None
    #: refuses (ValueError, one line) a config this study must not run: a benchmark's runs
    #: are what its KPI reads, so they keep its problem
    check: Callable[[Any], None] | None = None

    def run_fn(self) -> Callable[[Any, Any], dict[str, float]]:
        module, _, fn = self.entry_point.partition(":")
        return getattr(importlib.import_module(module), fn)


_STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    _STUDIES[study.name] = study
    return study


def get(name: str) -> Study:
    if name not in CATALOG:
        raise KeyError(name)
    importlib.import_module(CATALOG[name].module)
    return _STUDIES[name]


# --------------------------------------------------------------------------- --set
def settable_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a (nested) config dataclass → their field types."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            out.update(settable_keys(value, key + "."))
        else:
            out[key] = hints.get(f.name, type(value))
    return out


def _parse(text: str, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if typ in (int, float, str):
            return typ(text)
        value = json.loads(text)
        if origin is tuple:
            return tuple(value)
        return value
    except (ValueError, json.JSONDecodeError, TypeError):
        raise ValueError(f"--set {key}: cannot read {text!r} as {getattr(typ, '__name__', typ)}") from None


def apply_overrides(config: Any, pairs: list[str]) -> Any:
    """``key=value`` pairs onto a copy of ``config``, then every level validated again;
    errors (``ConfigError``) name the dotted key and what is allowed."""
    keys = settable_keys(config)
    config = copy.deepcopy(config)
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set: expected key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        if key not in keys:
            hint = difflib.get_close_matches(key, list(keys), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"--set: unknown key {key!r}{extra}; allowed: {', '.join(sorted(keys))}")
        value = _parse(text, keys[key], key)
        *parents, leaf = key.split(".")
        obj = config
        for p in parents:
            obj = getattr(obj, p)
        object.__setattr__(obj, leaf, value)
    return rebuild(config)
