"""Files a run read that have moved since (a wafer archived, a scratch disk renamed).

A run records the absolute paths of what it read, and a replay reads them there again.
``--moved OLD=NEW`` says where a folder (or file) the run read is now: each recorded path
under OLD, in the config and the datasets, is read under NEW instead. Nothing else
changes, and the replay still checks every file's sha256 against the run's, so a moved
file replays and a changed one is still refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tracking.store import TrackingError

#: (old, new) absolute path prefixes
Moves = tuple[tuple[str, str], ...]


def parse_moves(pairs: Iterable[str]) -> Moves:
    """``OLD=NEW`` pairs as absolute, normalised paths; NEW must exist."""
    moves = []
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not (sep and old and new):
            raise TrackingError(f"--moved: {pair!r} is not OLD=NEW (where the run read a folder or file, "
                                "and where it is now)")
        new = os.path.abspath(os.path.expanduser(new))
        if not os.path.exists(new):
            raise TrackingError(f"--moved: {new} (the new place of {old}) does not exist")
        moves.append((os.path.abspath(os.path.expanduser(old)), new))
    return tuple(moves)


def _under(path: str, old: str) -> bool:
    return path == old or path.startswith((old + os.sep, old + ":"))  # (":": a model reference's class)


def moved_path(path: str, moves: Moves) -> str:
    """``path`` with the first OLD it lies under replaced by its NEW; unchanged when it lies
    under none."""
    for old, new in moves:
        if _under(path, old):
            return new + path[len(old):]
    return path


def moved_values(value: Any, moves: Moves) -> Any:
    """A recorded config (JSON values) with every path string moved."""
    if isinstance(value, str):
        return moved_path(value, moves)
    if isinstance(value, list):
        return [moved_values(v, moves) for v in value]
    if isinstance(value, dict):
        return {k: moved_values(v, moves) for k, v in value.items()}
    return value


def strings(value: Any) -> Iterable[str]:
    """Every string in recorded JSON values."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, dict)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from strings(v)


def check_used(moves: Moves, read: Iterable[str]) -> None:
    """Refuse a move under which the run read nothing (a typo would otherwise be silent)."""
    read = list(read)
    for old, _ in moves:
        if not any(_under(p, old) for p in read):
            tops: list[str] = []  # the paths read, less those under another
            for p in sorted({p for p in read if os.path.isabs(p)}):
                if not any(_under(p, t) for t in tops):
                    tops.append(p)
            said = f"; it read under {', '.join(tops[:3])}{', …' if len(tops) > 3 else ''}" if tops else ""
            raise TrackingError(f"--moved: the run read nothing under {old}{said}")
