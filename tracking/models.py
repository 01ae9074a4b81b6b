"""Models in and out of the store as weights plus config: nothing is ever unpickled.

A model artifact is a folder (default ``model/``) with

- ``model.safetensors``: the tensors (``safetensors``: a flat, typed format; reading it
  cannot run code), keys prefixed by the part they belong to (``model.``, ``problem.``);
- ``model.json``: ``builder`` (``module:function`` that rebuilds the module from the
  config), ``config_class`` and ``config`` (canonical JSON).

A shared MLflow server must not be a code-execution path: a run whose model is a pickle
(``*.pt``, ``*.pkl``, an ``MLmodel`` folder of ``mlflow.pytorch``) is refused, with the
command that converts it (``python -m tracking.models convert RUN_ID``, which reads the old
file with ``torch.load(weights_only=True)``: tensors only). Builders are imported only from
the project's own packages.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from cpikan.arguments import ArgumentParser
from cpikan.config import from_recorded, to_jsonable
from tracking import store
from tracking.store import TrackingError

WEIGHTS, META = "model.safetensors", "model.json"
TRUSTED = ("cpikan.", "studies.", "tracking.")
PICKLES = ("*.pt", "*.pth", "*.pkl", "*.pickle", "MLmodel")


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def save(folder: Path, parts: dict[str, Any], builder: str, config: Any) -> Path:
    """Write ``parts`` (name → module or state dict) and the metadata into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for part, obj in parts.items():
        state = obj.state_dict() if hasattr(obj, "state_dict") else obj
        tensors.update({f"{part}.{k}": v.detach().cpu().contiguous() for k, v in state.items()})
    save_file(tensors, str(folder / WEIGHTS))
    meta = {"format": 1, "builder": builder, "config_class": _qualname(config), "config": to_jsonable(config)}
    (folder / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return folder


def log_model(run: Any, parts: dict[str, Any], builder: str, config: Any, artifact_path: str = "model") -> None:
    """Log a model artifact on ``run`` (a :class:`tracking.tracker.Tracker`)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(Path(tmp) / artifact_path, parts, builder, config)
        for f in folder.iterdir():
            run.log_artifact(f, artifact_path)


def _import(ref: str) -> Any:
    module, _, name = ref.partition(":")
    if not module.startswith(TRUSTED):
        raise TrackingError(f"model builder {ref!r} is outside the project's packages; refusing to import it")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise TrackingError(f"model builder {ref!r} cannot be imported ({exc})") from None
    return obj


def read(folder: Path, run_id: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, tensors by key) of a model folder; refuses pickles."""
    from safetensors.torch import load_file

    where = f"run {run_id}" if run_id else str(folder)
    if not (folder / WEIGHTS).exists():
        pickled = sorted(p.name for pattern in PICKLES for p in folder.glob(pattern))
        if pickled:
            raise TrackingError(f"{where} stores its model as a pickle ({', '.join(pickled)}); refusing to unpickle "
                                f"from the store: convert it once with python -m tracking.models convert {run_id or 'RUN_ID'}")
        raise TrackingError(f"{where} has no {WEIGHTS} model artifact")
    try:
        meta = json.loads((folder / META).read_text())
        return meta, load_file(str(folder / WEIGHTS))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise TrackingError(f"{where}: unreadable model artifact ({type(exc).__name__}: {exc})") from None


def part(tensors: dict[str, Any], name: str) -> dict[str, Any]:
    """The state dict of one part (``model``, ``problem``)."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def download(run_id: str, artifact_path: str = "model", dst: str | None = None) -> Path:
    from mlflow.exceptions import MlflowException

    client = store.client(must_exist=True)
    run_id = store.get_run(client, run_id).info.run_id
    try:
        return Path(client.download_artifacts(run_id, artifact_path, dst or tempfile.mkdtemp()))
    except (MlflowException, OSError):
        raise TrackingError(f"run {run_id} has no {artifact_path}/ model artifact") from None


def read_run(run_id: str, artifact_path: str = "model") -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, tensors by key) of a run's model artifact, without building the module."""
    with tempfile.TemporaryDirectory() as tmp:
        return read(download(run_id, artifact_path, tmp), run_id)


def load_model(run_id: str, artifact_path: str = "model", code: tuple[str, ...] = (),
               moves: tuple[tuple[str, str], ...] = ()) -> tuple[Any, dict[str, Any], Any]:
    """(module in eval mode, all tensors, config) of a run's model artifact; ``code``: the
    lab's own code the run names, as the user names it (see :func:`refuse_user_code`);
    ``moves``: where files the run read are now (``tracking.relocate``)."""
    from tracking import relocate

    meta, tensors = read_run(run_id, artifact_path)
    config_cls = _import(meta["config_class"])
    recorded = relocate.moved_values(meta["config"], moves)
    config, _ = from_recorded(config_cls, recorded)  # a run of an older version: as it then was
    refuse_user_code(config, run_id, code, moves)
    model = _import(meta["builder"])(config)
    model.load_state_dict(part(tensors, "model"))
    return model.eval(), tensors, config


def refuse_user_code(config: Any, run_id: str, code: tuple[str, ...] = (),
                     moves: tuple[tuple[str, str], ...] = ()) -> None:
    """A model from the store is rebuilt by the project's own code only: a config naming the
    lab's own (a ``FILE.py:CLASS`` problem) would have the store choose code to import. The
    user may name it (``code``, as they would type it): then the user chose it, and it is
    imported once every file the run read (that code and its modules, a reference) is there
    with the content the run recorded."""
    from cpikan import refs
    from cpikan.config import named_code

    named = named_code(config)
    if code and not named:
        raise TrackingError(f"--problem: run {run_id} names no code of the lab's own (its problem is the "
                            f"project's); leave --problem out")
    for path, ref, _ in named:
        if ref in {refs.absolute_ref(c) for c in code}:
            continue
        said = f" ({', '.join(code)} is not it)" if code else ""
        raise TrackingError(f"run {run_id}: its {path} is code of the lab's own ({ref}){said}; a model is rebuilt "
                            f"from the store with the project's code only, or with code you name (python -m "
                            f"reports.vtk {run_id} --problem {ref}); to train it again: python -m tracking.replay {run_id}")
    if named:
        from tracking.hashing import file_sha256
        from tracking.tracker import recorded_datasets

        client = store.client(must_exist=True)
        from tracking import relocate

        for name, info in recorded_datasets(client, store.get_run(client, run_id)).items():
            path = Path(relocate.moved_path(info["path"], moves))
            state = ("no longer exists (if it moved: --moved OLD=NEW)" if not path.is_file() else
                     "changed since the run (sha256 differs)" if file_sha256(path) != info["sha256"] else "")
            if state:
                raise TrackingError(f"run {run_id}: dataset {name!r} ({path}) {state}: the model would be rebuilt "
                                    "on other files than it was trained with")


def convert(run_id: str, builder: str, artifact_path: str, old_file: str) -> None:
    """Re-log a run's pickled state dict as safetensors (tensors only are read)."""
    import torch

    from tracking.replay import load_config

    client = store.client(must_exist=True)
    config, _ = load_config(client, store.get_run(client, run_id))
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"{artifact_path}/{old_file}", tmp)
        state = torch.load(path, map_location="cpu", weights_only=True)
        parts = state if all(isinstance(v, dict) for v in state.values()) else {"model": state}
        folder = save(Path(tmp) / "new", parts, builder, config)
        for f in folder.iterdir():
            client.log_artifact(run_id, str(f), artifact_path)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m tracking.models", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="re-log a pickled state dict as safetensors")
    conv.add_argument("run_id")
    conv.add_argument("--builder", default=None, help="module:function rebuilding the model from the run's config")
    conv.add_argument("--artifact-path", default=None)
    conv.add_argument("--file", default=None, help="the old file inside the artifact folder")
    args = ap.parse_args(argv)
    known = {"studies.pde:run": ("studies.pde:build_model", "model", "state_dict.pt"),
             "studies.psi_pretrain:run": ("studies.psi_pretrain:build_model", "psinet", "state_dict.pt")}
    try:
        entry = store.get_run(store.client(must_exist=True), args.run_id).data.tags.get("cpikan.entry_point", "")
        builder, path, old = known.get(entry, (None, "model", "state_dict.pt"))
        builder = args.builder or builder
        if builder is None:
            raise TrackingError(f"run {args.run_id}: entry point {entry or '(none)'} has no known builder; pass --builder")
        convert(args.run_id, builder, args.artifact_path or path, args.file or old)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {args.run_id}: model re-logged as {args.artifact_path or path}/{WEIGHTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
