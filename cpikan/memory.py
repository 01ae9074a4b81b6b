"""Peak resident memory of this process, as Linux reports it (VmHWM).

``getrusage``'s maxrss is carried across fork/exec (a child reports its parent's peak at
spawn time); VmHWM belongs to the current address space and can be reset, so it measures
one interpreter, or one stretch of work, on its own.
"""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb() -> float:
    """Peak RSS (MiB) since start or since the last :func:`reset_peak_rss`; NaN off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> None:
    """Reset the peak to the current RSS (writes 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
