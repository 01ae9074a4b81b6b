"""Samplers and pruners of a study, with seeds that make a parallel study reproducible.

- ``random``: every *trial* draws its parameters from a seed derived from the study seed
  and the trial number, so the set of configs is the same however the trials fall to the
  workers, and no two workers propose alike.
- ``default``: TPE (NSGA-II for several objectives), seeded per worker from the study seed
  and the worker's index. These samplers learn from finished trials, so with several
  workers the order of completions (timing) still shapes later proposals.

The choice and the seeds are recorded on the study and on every trial (user attributes),
so a replay or a resumed study does not depend on a library default. See docs/architecture.md.
"""

from __future__ import annotations

import zlib
from typing import Any

SAMPLERS = ("default", "random")
PRUNERS = ("default", "none")


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (study seed, worker index or trial number), stable across
    Python versions and machines (numpy's SeedSequence)."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _random_sampler_class() -> type:
    import optuna

    class TrialSeededRandomSampler(optuna.samplers.BaseSampler):
        """Random sampling, each trial from its own seed (study seed, trial number, name)."""

        def __init__(self, seed: int) -> None:
            self.seed = seed

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {}

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            return {}

        def sample_independent(self, study: Any, trial: Any, param_name: str, distribution: Any) -> Any:
            seed = derive_seed(self.seed, trial.number, zlib.crc32(param_name.encode()))
            return optuna.samplers.RandomSampler(seed=seed).sample_independent(
                study, trial, param_name, distribution)

    return TrialSeededRandomSampler


def make_sampler(kind: str, n_objectives: int, seed: int, worker: int) -> tuple[Any, dict[str, Any]]:
    """The sampler for one worker, and its description (recorded with the study)."""
    import optuna

    if kind == "random":
        return _random_sampler_class()(seed), {"sampler": "random (per-trial seeds)", "seed": seed}
    worker_seed = derive_seed(seed, worker)
    if n_objectives == 1:
        sampler: Any = optuna.samplers.TPESampler(seed=worker_seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=worker_seed)
    return sampler, {"sampler": type(sampler).__name__, "seed": seed, "worker_seed": worker_seed}


def make_pruner(study_pruner: str, kind: str) -> tuple[Any, dict[str, Any]]:
    """Median pruning (3 start-up trials, 1 warm-up step) where the study asks for it."""
    import optuna

    if study_pruner == "median" and kind != "none":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1), \
            {"pruner": "MedianPruner", "n_startup_trials": 3, "n_warmup_steps": 1}
    return optuna.pruners.NopPruner(), {"pruner": "NopPruner"}
