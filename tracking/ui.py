"""Start the MLflow UI against the project store, on 127.0.0.1 unless told otherwise.

    python -m tracking.ui [--host 127.0.0.1] [--port 5000] [-v]      (also: make ui)

Experiments open in MLflow's model-training view (the project tags each experiment
``mlflow.experimentKind=custom_model_development``). The server's own log (its workers'
start-up, a line per request, its libraries' warnings) goes to ``mlruns/ui.log``; ``-v``
shows it here; if the server stops with an error, its last lines are printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from cpikan.arguments import ArgumentParser
from tracking import interrupts, store
from tracking.provenance import redact_urls


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    uri = store.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port)]
    if store.is_local(uri):
        cmd += ["--default-artifact-root", (store.mlruns_dir() / "artifacts").as_uri()]
    store.make_embedded()
    return cmd


#: MLflow 3.x keeps the UI's view (GenAI or model training) per browser, defaulting to GenAI;
#: this query parameter opens a page in the model-training view
TRAINING_VIEW = "workflowType=machine_learning"


def ui_base() -> str:
    """Where the store's runs are browsed: the team server itself (without its user and
    password), else the ``make ui`` this machine serves (``MLFLOW_UI_PORT``, default 5000)."""
    from urllib.parse import urlsplit, urlunsplit

    uri = os.environ.get(store.ENV_URI, "")
    if uri.startswith(("http://", "https://")):
        parts = urlsplit(uri)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="")).rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('MLFLOW_UI_PORT', 5000)}"


def run_link(experiment_id: str, run_id: str, base: str | None = None) -> str:
    """A run's page, opening in the model-training view."""
    return f"{base or ui_base()}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def experiment_links(base: str) -> list[tuple[str, str]]:
    """(experiment name, URL opening it in the training view) for every experiment with runs."""
    c = store.client()
    out = []
    for exp in c.search_experiments(order_by=["name ASC"]):
        if c.search_runs([exp.experiment_id], max_results=1):
            out.append((exp.name, f"{base}/#/experiments/{exp.experiment_id}?{TRAINING_VIEW}"))
    return out


def print_links(links: list[tuple[str, str]]) -> None:
    if links:
        width = max(len(n) for n, _ in links)
        print("experiments, each opening in the model-training view:")
        for name, url in links:
            print(f"  {name:<{width}}  {url}")


def address_error(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port, or None. Checked first: the server itself
    would log 'Address already in use' among its start-up lines and exit."""
    import errno
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except socket.gaierror:
            return f"--host {host}: not a known address"
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"--port {port}: {host}:{port} is in use (a UI already running? open http://{host}:{port}); "
                        f"or give another, --port {port + 1}")
            return f"--host {host}: cannot listen there ({exc.strerror})"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m tracking.ui", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_UI_PORT", 5000)))
    ap.add_argument("-v", "--verbose", action="store_true", help="show the server's log here, not in mlruns/ui.log")
    args = ap.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"error: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    if os.environ.get(store.ENV_URI, "").startswith("http"):
        print(f"The team server already serves the UI: {ui_base()}")
        print_links(experiment_links(ui_base()))
        return 0
    taken = address_error(args.host, args.port)
    if taken:
        print(f"error: {taken}", file=sys.stderr)
        return 2
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {base}  (store: {redact_urls(store.tracking_uri())}; Ctrl-C stops it)")
    print_links(experiment_links(base))
    cmd = command(args.port, args.host)
    # MLflow's job runners serve GenAI features (scorers, trace archival) the lab does not use;
    # without them the UI starts no Huey consumers and stops in 1 s, not 6
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    interrupts.sigterm_as_ctrl_c()
    if args.verbose:
        sys.stdout.flush()
        return interrupts.serve(cmd)
    log = store.mlruns_dir() / "ui.log"
    print(f"server log: {log} (-v shows it here)", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = interrupts.serve(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code not in (0, -2, 130):  # not Ctrl-C: say why it stopped
        tail = "\n".join("  " + line for line in log.read_text(errors="replace").strip().splitlines()[-8:])
        print(f"error: the MLflow UI stopped (exit status {code}); the end of {log}:\n{tail}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
