"""The files a study's trials read, checked before it resumes.

A trial records by sha256 every file it read: the lab's own PDE and the modules it
imports, a reference solution, observations, images. A study resumed after one of them
changed would rank its old trials, made on the old file (another equation, another
measure), with new ones made on the new, and name a best among them. ``check_inputs``
refuses that resume, naming the file and the trials, before anything runs. A file that is
gone is not taken for a change: a study's synthetic data is remade identically when missing,
and a replay checks each trial's files one by one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path


def changed_trials(study_name: str, experiment: str,
                   sha_of: Callable[[Path], str | None]) -> dict[Path, list[int]]:
    """File → numbers of the study's complete trials that read another content of it than
    the file at the same path holds now (``sha_of(path)``: its sha256, None if gone)."""
    from tracking import store
    from tracking.tracker import recorded_datasets

    c = store.client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out: dict[Path, list[int]] = {}
    runs = c.search_runs([exp.experiment_id], f"tags.`optuna.study` = '{study_name}' "
                         "and tags.`optuna.state` = 'COMPLETE'", max_results=5000)
    for run in runs:
        number = run.data.tags.get("optuna.trial_number", "")
        if not number.isdigit():
            continue
        for info in recorded_datasets(c, run).values():
            path = Path(info["path"])
            now = sha_of(path)
            if now is not None and now != info["sha256"]:
                out.setdefault(path, []).append(int(number))
    return out


def cached_sha256() -> Callable[[Path], str | None]:
    """sha256 of a file by path, each file hashed once (a study's trials share their files)."""
    from tracking.hashing import file_sha256

    seen: dict[Path, str | None] = {}

    def sha_of(path: Path) -> str | None:
        if path not in seen:
            seen[path] = file_sha256(path) if path.is_file() else None
        return seen[path]

    return sha_of


def check_inputs(study_name: str, experiment: str, config_json: str) -> str | None:
    """None when the study's complete trials read the files as they are now, else the reason
    to refuse the resume (one line, with a study name of its own for the new files)."""
    sha_of = cached_sha256()
    changed = changed_trials(study_name, experiment, sha_of)
    if not changed:
        return None
    path, trials = sorted(changed.items(), key=lambda kv: min(kv[1]))[0]
    others = f" (and {len(changed) - 1} other file(s))" if len(changed) > 1 else ""
    made = ", ".join(f"#{n}" for n in sorted(trials)[:5]) + (", …" if len(trials) > 5 else "")
    now = sorted((str(p), sha_of(p)) for p in changed)  # the name is the new files': another change, another name
    fresh = hashlib.sha256(json.dumps([config_json, now]).encode()).hexdigest()[:6]
    return (f"study {study_name!r}: {path}{others} changed since its complete trial(s) {made} read it: its trials "
            f"would be ranked with these, made on another file; put it back, or start another with "
            f"--study-name {study_name}-{fresh}")
