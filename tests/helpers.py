"""Shared by the tests: small configs (fast on one CPU thread), and a command run in this process."""

from cpikan.experiment import ModelConfig, PINNConfig
from cpikan.train import TrainConfig


def tiny_config(problem: str = "diffusion", **train: object) -> PINNConfig:
    kw = {"n_interior": 200, "n_boundary": 40, "n_initial": 40}
    if problem == "helmholtz1d":
        kw = {"n_interior": 100}
    train.setdefault("adam_steps", 20)
    return PINNConfig(problem, kw, ModelConfig(hidden=(6, 6), degree=4, dtype="float64"),
                      TrainConfig(**train))


def run_main(main, args, mlruns=None, cwd=None):
    """A command's ``main(argv)`` run in this process as its console command would run it:
    the store ``mlruns``, the folder ``cwd``, its output and warnings captured, and what it
    set for its process (signal handlers, torch's threads) put back. A CompletedProcess,
    as ``subprocess.run`` gives, without the 3–5 s a new Python process takes to import torch
    and MLflow. Tests of what only a process shows (imports of the user's own files, signals,
    exit through the shell) start a real one."""
    import contextlib
    import io
    import signal
    import subprocess
    import sys
    import warnings

    import pytest
    import torch

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        if mlruns is not None:
            mp.setenv("CPIKAN_MLRUNS", str(mlruns))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        if cwd is not None:
            mp.chdir(cwd)
        warnings.simplefilter("default")  # as a command shows them: once, on stderr
        warnings.showwarning = lambda msg, cat, path, line, file=None, text=None: sys.stderr.write(
            warnings.formatwarning(msg, cat, path, line, text))
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def trial_run(mlruns, experiment):
    """(a client on the store ``mlruns``, the one trial run of ``experiment`` in it)."""
    import pytest

    from tracking import store

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CPIKAN_MLRUNS", str(mlruns))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        c = store.client()
        (run,) = [r for r in c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
                  if "optuna.trial_number" in r.data.tags]
    return c, run
