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
values are written once. A field added after runs were recorded without it says what those
runs did (``before=``), so that :func:`from_recorded` rebuilds an old run's config as the
code then behaved, not with today's default. See docs/howto.md ("add a config field").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

CHOICES = "choices"
REFS = "refs"  # a choice that may also name user code (MODULE:NAME, FILE.py:NAME): what it must be
RANGE = "range"
BEFORE = "before"  # what a run recorded before the field existed did (a value, or a function of its record)
_SAME: Any = object()  # no ``before``: the default is what the code did before the field existed


class ConfigError(ValueError):
    """A config field holds a value it does not allow. ``field`` is the dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")

    def within(self, parent: str) -> ConfigError:
        """The same error one level up (``init`` → ``model.init``)."""
        return ConfigError(f"{parent}.{self.field}", self.message)


def _before(before: Any) -> dict[str, Any]:
    return {} if before is _SAME else {BEFORE: before}


def choice(default: str, allowed: Sequence[str], *, refs: str = "", before: Any = _SAME) -> Any:
    """A dataclass field whose value must be one of ``allowed``, or, when ``refs`` says what
    it must be (``"a cpikan.pde.Problem"``), a reference to the user's code
    (:mod:`cpikan.refs`: its file or module must exist; nothing is imported here);
    ``before``: see :func:`added`."""
    refs_meta = {REFS: refs} if refs else {}
    return dataclasses.field(default=default, metadata={CHOICES: tuple(allowed), **refs_meta, **_before(before)})


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, optional: bool = False, before: Any = _SAME) -> Any:
    """A numeric field within ``[ge, le]`` (``gt``: strictly above); ``optional``: None allowed;
    ``before``: see :func:`added`."""
    return dataclasses.field(default=default, metadata={RANGE: (ge, gt, le, optional), **_before(before)})


def added(default: Any, *, before: Any | Callable[[Mapping[str, Any]], Any]) -> Any:
    """A field added with a default that changes what runs without it did: ``before`` is the
    value that does what they did (or a function of the run's recorded fields that gives
    it), so that a replay of such a run runs the same thing. A field whose default keeps the
    old behaviour (a new option, off by default) needs none of this."""
    return dataclasses.field(default=default, metadata=_before(before))


def check_choice(name: str, value: Any, allowed: Sequence[str], refs: str = "") -> None:
    """Raise :class:`ConfigError` naming the allowed values (and the closest one) when
    ``value`` is not among them (nor, with ``refs``, a reference to existing user code)."""
    if value in allowed:
        return
    if refs and isinstance(value, str):
        from cpikan import refs as user_code

        if user_code.is_ref(value):
            try:
                user_code.check_exists(value, name)
            except ValueError as exc:
                raise ConfigError(name, str(exc).removeprefix(f"{name}: ")) from None
            return
    hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    yours = f", or yours as FILE.py:NAME or MODULE:NAME ({refs})" if refs else ""
    raise ConfigError(name, f"unknown {value!r}; allowed: {', '.join(map(str, allowed))}{yours}{extra}")


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
            check_choice(f.name, value, f.metadata[CHOICES], f.metadata.get(REFS, ""))
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


def named_code(obj: Any) -> list[tuple[str, str, str]]:
    """(dotted path, reference, what it must be) of every field of ``obj`` (a config
    dataclass, nested ones too) that names the user's code (a ``choice`` with ``refs``)."""
    from cpikan import refs

    out = []
    for path, meta in declared(obj).items():
        value: Any = obj
        for part in path.split("."):
            value = getattr(value, part)
        if REFS in meta and isinstance(value, str) and refs.is_ref(value):
            out.append((path, value, meta[REFS]))
    return out


def from_recorded(cls: type, recorded: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A config of ``cls`` rebuilt from a run's recorded fields (its ``config.json``),
    written by this version of the code or an older one; nested configs too.

    A field the record lacks (added since the run) takes its ``before=`` value when it
    declares one, else its default; both are returned, dotted path → value, so a replay can
    say what it assumed. A recorded field this version no longer has is refused: what it
    did cannot be known here. A class that is not a dataclass is built by its ``from_dict``
    (or its keyword arguments), as recorded."""
    if not dataclasses.is_dataclass(cls):
        return (cls.from_dict(recorded) if hasattr(cls, "from_dict") else cls(**recorded)), {}
    filled: dict[str, Any] = {}
    return _from_recorded(cls, recorded, "", filled), filled


def nested(cls: type) -> dict[str, type]:
    """The fields of config dataclass ``cls`` that hold config dataclasses, by name → class."""
    import typing

    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name])}


def _from_recorded(cls: type, recorded: Mapping[str, Any], prefix: str, filled: dict[str, Any]) -> Any:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    nested_types = nested(cls)
    unknown = sorted(set(recorded) - {f.name for f in fields})
    if unknown:
        raise ConfigError(prefix + unknown[0], f"recorded by the run, but {cls.__name__} has no such field "
                          "any more (renamed or removed since); tracking.replay --recorded-code runs it with its own code")
    kwargs = {}
    for f in fields:
        if f.name in recorded:
            value = recorded[f.name]
            if f.name in nested_types and isinstance(value, Mapping):
                value = _from_recorded(nested_types[f.name], value, f"{prefix}{f.name}.", filled)
            kwargs[f.name] = value
            continue
        before = f.metadata.get(BEFORE, _SAME)
        if before is _SAME:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        else:
            value = kwargs[f.name] = before(recorded) if callable(before) else before
        filled[prefix + f.name] = to_jsonable(value)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise (exc.within(prefix.rstrip(".")) if prefix else exc) from None


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
