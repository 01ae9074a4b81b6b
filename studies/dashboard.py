"""optuna-dashboard on the project's study storage, on 127.0.0.1 unless told otherwise.

    python -m studies.dashboard [--storage URL] [--host 127.0.0.1] [--port 8080]   (also: make dashboard)

The storage is ``--storage URL``, else ``CPIKAN_STORAGE``, else the journal file
(``mlruns/optuna/journal.log``); studies the tracking store names in other storages are
listed when it starts, since this one does not show them. Every study is listed with its trials, their parameters, values,
intermediate values and user attributes (the MLflow run ID of each trial, the sampler and
its seeds). Exit status: 2 when the storage cannot be opened.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cpikan.arguments import ArgumentParser
from studies import storage
from tracking.provenance import redact_urls


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m studies.dashboard", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default=None, help="journal:PATH or postgresql://… (default: $CPIKAN_STORAGE, else the project's journal)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("-v", "--verbose", action="store_true", help="show the server's request log")
    args = ap.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"error: --port: must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    from tracking.ui import address_error

    taken = address_error(args.host, args.port)
    if taken:
        print(f"error: {taken}", file=sys.stderr)
        return 2
    url = args.storage or storage.default_storage()
    try:
        opened = storage.open_storage(url)
    except storage.StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:
        logging.getLogger("optuna_dashboard").setLevel(logging.WARNING)
    print(f"optuna-dashboard on http://{args.host}:{args.port}  (storage: {redact_urls(url)}; Ctrl-C stops it)",
          flush=True)
    elsewhere = studies_elsewhere(redact_urls(url))
    if elsewhere:
        shown = "; ".join(f"{where}: {', '.join(sorted(names))}" for where, names in sorted(elsewhere.items()))
        n = sum(map(len, elsewhere.values()))
        print(f"note: {n} {'study' if n == 1 else 'studies'} of the tracking store, in other storages, not shown "
              f"here ({shown}); --storage URL or CPIKAN_STORAGE=URL shows them", flush=True)
    try:
        serve(opened, args.host, args.port, args.verbose)
    except KeyboardInterrupt:
        pass
    return 0


def studies_elsewhere(shown: str) -> dict[str, set[str]]:
    """Studies whose MLflow parent run names a storage other than ``shown`` (storage → study
    names), so a team's PostgreSQL studies are not silently missing from a journal's
    dashboard. Empty when there is no tracking store or it cannot be read."""
    from tracking import store

    if not store.exists():
        return {}
    try:
        c = store.client()
        ids = [e.experiment_id for e in c.search_experiments()]
        runs = c.search_runs(ids, filter_string="tags.`cpikan.study_parent` = 'true'", max_results=1000) if ids else []
    except Exception:  # noqa: BLE001 — a hint only; the dashboard serves the storage either way
        return {}
    out: dict[str, set[str]] = {}
    for r in runs:
        where = r.data.tags.get("optuna.storage", "")
        if where and same_place(where) != same_place(shown):
            out.setdefault(where, set()).add(r.data.tags.get("optuna.study_name", "?"))
    return out


def same_place(url: str) -> str:
    """A storage URL without scheme and user (runs before 2026-12-06 recorded it so)."""
    return url.split("://", 1)[-1].rpartition("@")[2]


def serve(opened: object, host: str, port: int, verbose: bool) -> None:
    """optuna-dashboard's WSGI app on wsgiref, as its ``run_server`` serves it, without the
    server's start-up banner and (unless ``verbose``) its line per request."""
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from optuna_dashboard import wsgi

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — the base class's name
            if verbose:
                super().log_message(format, *args)

    class Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    with make_server(host, port, wsgi(opened), server_class=Server, handler_class=Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
