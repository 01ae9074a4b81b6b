"""The code a run was made with, checked out again: its commit in a temporary git worktree,
with the uncommitted diff the run recorded applied on top.

Today's code replays a month-old run as today's code would run it: a rounding changed
anywhere since reads as "did not reproduce". ``python -m tracking.replay RUN_ID
--recorded-code`` runs the replay inside this checkout instead, so an old run can be
reproduced exactly and then set beside a replay with today's code (``tracking.diff``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracking import provenance
from tracking.store import TrackingError


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def recorded_diff(run: Any, client: Any) -> tuple[str, list[str]]:
    """(the run's uncommitted diff, the untracked files it could only name) — empty when
    the run was made from a clean tree."""
    text = provenance.recorded_diff(client, run)
    if text is None:
        raise TrackingError(f"run {run.info.run_id} was made from a tree with uncommitted changes but has no "
                            f"readable {provenance.DIFF_ARTIFACT}; its code cannot be checked out")
    lines = text.splitlines(keepends=True)
    mark = provenance.UNTRACKED
    untracked = [line[len(mark):].strip() for line in lines if line.startswith(mark)]
    return "".join(line for line in lines if not line.startswith(mark)), untracked


@contextmanager
def recorded_code(run: Any, client: Any, root: Path | None = None) -> Iterator[tuple[Path, list[str]]]:
    """Yield (a checkout of the run's code, the untracked files the run named but did not
    record); the checkout is removed afterwards. Raises TrackingError when the commit is
    not in the repository at ``root`` (default: this project's) or the diff does not apply."""
    rid, commit = run.info.run_id, run.data.tags.get("git.commit", "")
    root = root or provenance.project_root()
    if not commit or commit == "unknown":
        raise TrackingError(f"run {rid} records no git commit; the code it was made with cannot be checked out")
    if _git("cat-file", "-e", f"{commit}^{{commit}}", cwd=root).returncode != 0:
        raise TrackingError(f"run {rid} was made at commit {commit[:12]}, which the repository at {root} does not "
                            "hold: git fetch it, or replay with today's code (without --recorded-code)")
    diff, untracked = recorded_diff(run, client)
    tmp = Path(tempfile.mkdtemp(prefix="cpikan-code-"))
    code = tmp / "code"
    try:
        made = _git("worktree", "add", "--detach", "--quiet", str(code), commit, cwd=root)
        if made.returncode != 0:
            last = (made.stderr.strip().splitlines() or ["?"])[-1]
            raise TrackingError(f"git worktree add {commit[:12]} failed: {last}")
        if diff.strip():
            (tmp / "uncommitted.diff").write_text(diff)
            applied = _git("apply", "--whitespace=nowarn", str(tmp / "uncommitted.diff"), cwd=code)
            if applied.returncode != 0:
                first = (applied.stderr.strip().splitlines() or ["?"])[0]
                raise TrackingError(f"run {rid}: its recorded uncommitted changes do not apply to commit "
                                    f"{commit[:12]} ({first})")
        yield code, untracked
    finally:
        if code.exists():
            _git("worktree", "remove", "--force", str(code), cwd=root)
        _git("worktree", "prune", cwd=root)
        shutil.rmtree(tmp, ignore_errors=True)
