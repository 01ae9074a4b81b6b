"""Where a run came from: code version, command, machine, library versions; secrets redacted."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSW|PASSWD|PWD|KEY|CREDENTIAL|AUTH|COOKIE|SESSION)", re.I)
#: names that match the pattern but hold no secret (the shell's working directories)
NOT_SECRET = frozenset({"PWD", "OLDPWD"})
REDACTED = "[REDACTED]"


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


#: where a run keeps its uncommitted diff, and how the diff names an untracked file (its
#: content is not recorded)
DIFF_ARTIFACT = "provenance/uncommitted.diff"
UNTRACKED = "# untracked: "


def recorded_diff(client: Any, run: Any) -> str | None:
    """A run's recorded uncommitted diff: '' when it was made from a clean tree, None when
    it has one that cannot be read (a missing or unreadable artifact)."""
    import tempfile

    if run.data.tags.get("git.dirty") != "true":
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run.info.run_id, DIFF_ARTIFACT, tmp)).read_text()
        except Exception:  # noqa: BLE001 — what the caller says depends on why it wants it
            return None


def head_commit(root: Path | None = None) -> str | None:
    """The checkout's commit, or None outside a git repository (no diff computed)."""
    commit = _git("rev-parse", "HEAD", cwd=root or project_root())
    return commit.strip() if commit else None


def git_state(root: Path | None = None) -> dict[str, Any]:
    """commit, branch, dirty flag and the uncommitted diff (tracked changes, staged or not)."""
    root = root or project_root()
    commit = head_commit(root)
    if commit is None:
        return {"commit": "unknown", "branch": "unknown", "dirty": False, "diff": ""}
    branch = (_git("rev-parse", "--abbrev-ref", "HEAD", cwd=root) or "unknown").strip()
    diff = _git("diff", "HEAD", "--no-color", cwd=root) or ""
    untracked = (_git("ls-files", "--others", "--exclude-standard", cwd=root) or "").split()
    if untracked:
        diff += "".join(f"\n{UNTRACKED}{u}" for u in untracked)
    return {"commit": commit, "branch": branch, "dirty": bool(diff.strip()), "diff": diff}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "mlflow", "optuna", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+(@)", re.I)
#: a password given as a URL's query parameter (``postgresql://host/db?password=…``)
QUERY_SECRET = re.compile(r"([?&;](?:password|passwd|pass|sslpassword|token|secret|api_?key)=)[^&;#\s]+", re.I)


def redact_urls(text: str) -> str:
    """``text`` with the password of every URL in it (``user:password@``, ``?password=``)
    replaced: fit for a screen, a log, a run's tags or a report."""
    return QUERY_SECRET.sub(rf"\1{REDACTED}", URL_PASSWORD.sub(rf"\1{REDACTED}\2", text))


def redact(text: str, env: dict[str, str] | None = None) -> str:
    """Replace the value of every secret-looking environment variable wherever it appears,
    and the password of every URL (:func:`redact_urls`)."""
    env = os.environ if env is None else env
    for name, value in env.items():
        if SECRET_NAME.search(name) and name not in NOT_SECRET and len(value) >= 4:
            text = text.replace(value, REDACTED)
    return redact_urls(text)


def source_name() -> str:
    """What ran: ``python -m module`` as the module, a script as its path."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


def command_line() -> str:
    return redact(" ".join([os.path.basename(sys.executable), *sys.argv]))


def collect(seed: int | None = None) -> dict[str, Any]:
    """Provenance as flat tags (strings) plus the diff text (logged as an artifact)."""
    import torch

    git = git_state()
    tags = {
        "git.commit": git["commit"],
        "git.branch": git["branch"],
        "git.dirty": str(git["dirty"]).lower(),
        "command": command_line(),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch.threads": str(torch.get_num_threads()),
    }
    # MLflow's own names, so the UI's Source and commit fields are filled
    tags.update({"mlflow.source.type": "LOCAL", "mlflow.source.name": source_name(),
                 "mlflow.source.git.commit": git["commit"], "mlflow.source.git.branch": git["branch"]})
    if seed is not None:
        tags["seed"] = str(seed)
    tags.update({f"version.{k}": v for k, v in versions().items()})
    return {"tags": {k: redact(v) for k, v in tags.items()}, "diff": redact(git["diff"])}
