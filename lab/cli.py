"""``cpikan-lab``: every command of the lab behind one entry point.

    cpikan-lab study NAME …       run a named study           (python -m studies.run)
    cpikan-lab reconstruct WAFER… height maps from buckets    (python -m studies.reconstruct)
    cpikan-lab check-model REF    is your model exact tiled?  (python -m cpikan.tiling check)
    cpikan-lab place-sensors SNAP K sensors on your snapshots (python -m studies.place_sensors)
    cpikan-lab estimate-field D R readings → whole fields     (python -m studies.estimate_field)
    cpikan-lab replay RUN_ID      re-run a past run, compare  (python -m tracking.replay)
    cpikan-lab diff RUN_A RUN_B   what differs between runs   (python -m tracking.diff)
    cpikan-lab report             the weekly KPI report       (python -m reports.kpi)
    cpikan-lab ui                 the MLflow UI               (python -m tracking.ui)
    cpikan-lab dashboard          optuna-dashboard            (python -m studies.dashboard)

Each subcommand takes the same arguments as its ``python -m`` form (``cpikan-lab study
--help``). One error policy for all: a user's mistake is one line on stderr starting with
``error:`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand → module whose ``main(argv) -> int`` runs it
COMMANDS = {
    "study": "studies.run",
    "reconstruct": "studies.reconstruct",
    "check-model": "cpikan.tiling.check",
    "place-sensors": "studies.place_sensors",
    "estimate-field": "studies.estimate_field",
    "replay": "tracking.replay",
    "diff": "tracking.diff",
    "report": "reports.kpi",
    "ui": "tracking.ui",
    "dashboard": "studies.dashboard",
}


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the input is wrong" in every layer."""
    from cpikan.config import ConfigError
    from studies.run import BadInput
    from studies.storage import StorageError
    from tracking.store import TrackingError

    return ConfigError, BadInput, StorageError, TrackingError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    try:
        return int(module.main(rest) or 0)
    except user_errors() as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
