"""What every config dataclass shares: declared choices and ranges, checked in one place,
and the canonical JSON form that identifies a run.

A field declares what it allows where it is defined::

    @dataclass
    class ModelConfig:
        init: str = choice("xavier", INITS)
        degree: int = bounded(5, ge=1, le=32)

        def __post_init__(self) -> None:
            validate(self)

and :func:`validate` checks them all, with a close-match hint for a misspelt name. The CLIs
read the same metadata (:func:`declared`) to list what ``--set`` accepts, so the allowed
values are written once. See docs/howto.md ("add a config field").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHOICES = "choices"
RANGE = "range"


class ConfigError(ValueError):
    """A config field holds a value it does not allow. ``field`` is the dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")

    def within(self, parent: str) -> ConfigError:
        """The same error one level up (``init`` → ``model.init``)."""
        return ConfigError(f"{parent}.{self.field}", self.message)


def choice(default: str, allowed: Sequence[str]) -> Any:
    """A dataclass field whose value must be one of ``allowed``."""
    return dataclasses.field(default=default, metadata={CHOICES: tuple(allowed)})


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, optional: bool = False) -> Any:
    """A numeric field within ``[ge, le]`` (``gt``: strictly above); ``optional``: None allowed."""
    return dataclasses.field(default=default, metadata={RANGE: (ge, gt, le, optional)})


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming the allowed values (and the closest one) when
    ``value`` is not among them."""
    if value in allowed:
        return
    hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ConfigError(name, f"unknown {value!r}; allowed: {', '.join(map(str, allowed))}{extra}")


def check_range(name: str, value: Any, ge: float | None = None, gt: float | None = None,
                le: float | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
        parts = ([f"≥ {ge}"] if ge is not None else []) + ([f"> {gt}"] if gt is not None else []) \
            + ([f"≤ {le}"] if le is not None else [])
        raise ConfigError(name, f"must be {' and '.join(parts)}{' or None' if optional else ''}, got {value!r}")


def validate(obj: Any) -> None:
    """Check every field of ``obj`` that declares choices or a range; nested config
    dataclasses were validated when they were built, so an error there is re-raised with
    its dotted path."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if CHOICES in f.metadata:
            check_choice(f.name, value, f.metadata[CHOICES])
        if RANGE in f.metadata:
            check_range(f.name, value, *f.metadata[RANGE])


def rebuild(obj: Any) -> Any:
    """A fresh instance of a (nested) config dataclass, so that every level's
    ``__post_init__`` runs again (after fields were set one by one); errors carry the
    dotted path of the field."""
    kwargs = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            try:
                value = rebuild(value)
            except ConfigError as exc:
                raise exc.within(f.name) from None
        kwargs[f.name] = value
    return type(obj)(**kwargs)


def declared(obj: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Dotted field path → its declared metadata (choices, range), for nested configs."""
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(declared(value, f"{prefix}{f.name}."))
        elif CHOICES in f.metadata or RANGE in f.metadata:
            out[prefix + f.name] = dict(f.metadata)
    return out


# --------------------------------------------------------------------------- canonical JSON
def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, paths → plain JSON types (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted keys, no insignificant white space, NaN refused: equal configs give equal
    bytes, and the sha256 of these bytes is a run's config hash."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
