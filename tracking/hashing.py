"""Content hashes: config hashes (of the canonical JSON, cpikan.config) and streamed,
cached file digests."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from cpikan.config import canonical_json, to_jsonable

CHUNK = 1 << 20  # 1 MiB: bounded memory for multi-GB images


def config_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the whole file, read in 1 MiB chunks; cached by (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _cache:
            return _cache[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _lock:
        _cache[key] = digest
    return digest


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/dataclasses → {"a.b.c": value}; lists stay values (JSON-encoded later)."""
    obj = to_jsonable(obj)
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    else:
        out[prefix or "value"] = obj
    return out
