"""optuna-dashboard on the project's study storage, on 127.0.0.1 unless told otherwise.

    python -m studies.dashboard [--storage URL] [--host 127.0.0.1] [--port 8080]   (also: make dashboard)

The storage is the default journal file (``mlruns/optuna/journal.log``) or ``--storage
postgresql://…``. Every study is listed with its trials, their parameters, values,
intermediate values and user attributes (the MLflow run ID of each trial, the sampler and
its seeds). Exit status: 2 when the storage cannot be opened.
"""

from __future__ import annotations

import argparse
import logging
import sys

from studies import storage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studies.dashboard", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default=None, help="journal:PATH (default: the project's) or postgresql://…")
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
    print(f"optuna-dashboard on http://{args.host}:{args.port}  (storage: {url.split('@')[-1]}; Ctrl-C stops it)",
          flush=True)
    try:
        serve(opened, args.host, args.port, args.verbose)
    except KeyboardInterrupt:
        pass
    return 0


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
