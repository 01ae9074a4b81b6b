"""How a command ends when it is stopped: Ctrl-C (SIGINT) or SIGTERM (``kill``, ``timeout``,
a batch scheduler's time limit).

A command calls :func:`sigterm_as_ctrl_c` first: either signal then raises KeyboardInterrupt,
so its runs are marked KILLED and its trials FAILED before it exits 130, instead of being
left RUNNING in the store. Once it is ending, a further SIGTERM (a parent passing its own
on) is ignored, so the ending is not cut short; a second Ctrl-C still is, as users expect.

Ctrl-C reaches every process of the terminal's group; ``kill PID`` only the one. A parent
stopped with child processes (study workers, a child command) therefore gives them a moment
to end on their own signal, then passes SIGTERM to those still running (:func:`stop`),
and waits: ``subprocess.call`` would kill a child at once (:func:`call` does not).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable
from typing import Any

#: how long children may take to end on a signal of their own before this one is passed on
OWN_SIGNAL_S = 3.0
#: how long they then have to end their runs before they are killed
GRACE_S = 60.0

_ending = False


def _interrupt(signum: int, frame: Any) -> None:
    global _ending
    if signum == signal.SIGTERM and _ending:
        return  # already ending: a parent's SIGTERM must not cut the ending short
    _ending = True
    raise KeyboardInterrupt(signal.Signals(signum).name)


def sigterm_as_ctrl_c() -> None:
    """From now on SIGTERM ends this process as Ctrl-C does (call from the main thread). An
    ignored SIGINT (a background job's) stays ignored."""
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)


def stop(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """End child processes after this one was interrupted: those that got the signal too end
    on their own; the others get SIGTERM; any still running after :data:`GRACE_S` are killed."""
    procs = list(procs)
    for p in procs:
        try:
            p.wait(timeout=OWN_SIGNAL_S)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def serve(argv: list[str], **kwargs: Any) -> int:
    """Run a server command (``mlflow ui``, which starts uvicorn and its workers) in a process
    group of its own until it ends or this process is interrupted, then stop the whole group:
    a SIGTERM to this process alone once left the server holding its port."""
    import os

    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, None)):  # as Ctrl-C would, then for sure
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass


def call(argv: list[str], **kwargs: Any) -> int:
    """``subprocess.call(argv, **kwargs)``, letting the child end its runs when this command
    is interrupted (KeyboardInterrupt is raised again once it has)."""
    proc = subprocess.Popen(argv, **kwargs)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop([proc])
        raise
