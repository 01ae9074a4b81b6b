"""Child commands and Ctrl-C.

The terminal's Ctrl-C reaches every process of its group, the child command included: a
study or replay child marks its runs KILLED and its trials FAILED, then exits 130. So the
parent waits for that instead of killing the child at once, as ``subprocess.call`` and
``subprocess.run`` do on KeyboardInterrupt (which left its runs RUNNING in the store).
"""

from __future__ import annotations

import subprocess
from typing import Any

#: how long an interrupted child may take to end its runs before it is killed
GRACE_S = 60.0


def call(argv: list[str], **kwargs: Any) -> int:
    """``subprocess.call(argv, **kwargs)``, letting the child end its own way on Ctrl-C
    (KeyboardInterrupt is raised again once it has)."""
    proc = subprocess.Popen(argv, **kwargs)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
