"""Start the MLflow UI against the project store, on 127.0.0.1 unless told otherwise.

    python -m tracking.ui [--host 127.0.0.1] [--port 5000]      (also: make ui)

Experiments open in MLflow's model-training view (the project tags each experiment
``mlflow.experimentKind=custom_model_development``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tracking import store


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    uri = store.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port)]
    if store.is_local(uri):
        cmd += ["--default-artifact-root", (store.mlruns_dir() / "artifacts").as_uri()]
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracking.ui", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_UI_PORT", 5000)))
    args = ap.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"error: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    if os.environ.get(store.ENV_URI, "").startswith("http"):
        print(f"The team server already serves the UI: {os.environ[store.ENV_URI]}")
        return 0
    print(f"MLflow UI on http://{args.host}:{args.port}  (store: {store.tracking_uri()}; Ctrl-C stops it)",
          flush=True)
    try:
        return subprocess.call(command(args.port, args.host))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
