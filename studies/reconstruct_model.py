"""The model side of ``studies.reconstruct``: which model, what it is fed, how it is tiled.

- :func:`load_model`: a psi_pretrain run (``best``: the best for the wafer's wavelengths) or
  the user's own ``MODULE:FACTORY`` with its weights;
- :func:`model_units` / :func:`check_units`: a psi_pretrain model is fed the intensity units
  it was trained on, whatever the files' bit depth;
- :func:`tile_plan`, :func:`blend_error`: tiles within the memory budget, exact or measured.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cpikan.psi import io
from cpikan.psi.physics import DEFAULT_PSI, PSIConfig


def psi_config(cfg: Any) -> PSIConfig:
    """The physics of ``cfg``'s wafers (a ReconstructConfig): its wavelengths."""
    return PSIConfig(wavelengths=tuple(cfg.wavelengths))


def load_model(ref: str, weights: str | None = None,
               wavelengths: tuple[float, ...] = DEFAULT_PSI.wavelengths) -> tuple[Any, str]:
    """(model, run ID) for ``best`` (the best run trained for ``wavelengths``), a run ID, or
    (model, "") for the user's own ``MODULE:FACTORY`` with ``weights``; refuses what is not a
    PSI model."""
    from cpikan import refs
    from cpikan.tiling import factory
    from tracking.store import TrackingError

    if refs.is_ref(ref):
        try:
            return factory.build(ref, weights), ""
        except ValueError as exc:
            raise io.InputError(f"--{exc}") from None  # 'model: …' or 'weights: …'
    try:
        return _load_model(ref, wavelengths)
    except TrackingError as exc:
        raise io.InputError(f"--model {ref}: {exc}") from None


def _load_model(ref: str, wavelengths: tuple[float, ...]) -> tuple[Any, str]:
    from tracking import models, store

    if ref == "best":
        ref = best_model_run(wavelengths)
    run = store.get_run(store.client(must_exist=True), ref)
    ref = run.info.run_id  # the whole ID when given its start
    if run.data.tags.get("cpikan.entry_point") != "studies.psi_pretrain:run":
        raise io.InputError(f"--model {ref}: not a PSI model run (entry point "
                            f"{run.data.tags.get('cpikan.entry_point', 'none')}); use a psi_pretrain run, best or classical")
    return models.load_model(ref)[0], ref


def best_model_run(wavelengths: tuple[float, ...]) -> str:
    """The finished psi_pretrain run with the lowest rmse_nm among those trained for
    ``wavelengths`` (runs from before the option were trained for the default lasers)."""
    import json

    from tracking import store
    from tracking.links import best_run
    from tracking.provenance import redact_urls

    def for_these_lasers(run: Any) -> bool:
        trained = json.loads(run.data.params.get("wavelengths", "null")) or DEFAULT_PSI.wavelengths
        return tuple(float(v) for v in trained) == tuple(wavelengths)

    if not store.exists():  # not an empty one made here
        raise io.InputError(f"--model best: no tracking store at {store.mlruns_dir()} (run where the lab's mlruns/ "
                            "is, or set CPIKAN_MLRUNS or MLFLOW_TRACKING_URI)")
    run = best_run("studies/psi_pretrain", "rmse_nm", accept=for_these_lasers)
    if run is None and best_run("studies/psi_pretrain", "rmse_nm") is None:  # the store searched again only here
        raise io.InputError(f"--model best: no psi_pretrain run in {redact_urls(store.tracking_uri())} "
                            "(python -m studies.run psi_pretrain)")
    if run is None:
        raise io.InputError(f"--model best: no psi_pretrain run trained for wavelengths {tuple(wavelengths)} µm "
                            f"(python -m studies.run psi_pretrain --set 'wavelengths=[{', '.join(map(str, wavelengths))}]' "
                            f"--study-name psi_pretrain_{'_'.join(map(str, wavelengths))})")
    return run.info.run_id


#: float intensities above this cannot be the 8-bit-scale units psi_pretrain models take
FLOAT_UNITS_MAX = 512.0


def model_units(cfg: Any, dtype: Any) -> Any:
    """What the model's input is multiplied by: the project's PSI models were trained on
    intensity units (:func:`cpikan.psi.physics.dequantize`: 8-bit counts as they are, 16-bit
    counts / 256), so 16-bit files are scaled for them (a float .npy is taken as those units:
    :func:`check_units`); your own model gets the files' counts, as its contract says.
    None: as read."""
    from cpikan import refs
    from cpikan.psi.physics import counts_per_unit

    if refs.is_ref(cfg.model) or dtype.kind != "u":
        return None
    scale = 1.0 / counts_per_unit(8 * dtype.itemsize)
    return None if scale == 1.0 else (lambda batch: batch * scale)


def check_units(src: Path, cfg: Any, channels: int, pattern: str | None = None) -> None:
    """Refuse float intensities that plainly are not intensity units for a project model
    (16-bit counts saved as floats would reach it 256× too bright)."""
    import numpy as np

    from cpikan import refs

    if cfg.model == "classical" or refs.is_ref(cfg.model):
        return
    sample = io.first_channel(src, channels, pattern)
    if sample.dtype.kind != "f":
        return
    top = float(np.max(sample))
    if top > FLOAT_UNITS_MAX:
        raise io.InputError(f"{src}: float intensities reach {top:.0f}, but a psi_pretrain model takes intensity "
                            "units (8-bit scale, 16-bit counts / 256): save the counts as uint16, or divide by 256")


def blend_error(model: Any, buckets: Any, plan: dict[str, float], mode: str, units: Any = None) -> float:
    """How far blended tiles are from whole-image inference, in µm of height, measured on
    this wafer: its central crop of one tile's side (whole-image inference of that fits the
    memory budget) cut into 2 × 2 tiles with the plan's overlap and window."""
    import numpy as np

    from cpikan.tiling import predict_full, predict_tiled, resolve

    _, h, w = buckets.shape
    if h <= plan["tile"] and w <= plan["tile"]:
        return 0.0  # one tile: nothing blended
    factor = resolve(model, buckets.shape[0]).factor
    side = min(h, w, int(plan["tile"])) // factor * factor
    overlap = min(int(plan["overlap"]), side // 2)
    tile = -(-(side + overlap) // 2 // factor) * factor
    if side < 2 * factor or tile <= overlap:
        return float("nan")
    y0, x0 = (h - side) // 2 // factor * factor, (w - side) // 2 // factor * factor
    crop = np.asarray(buckets[:, y0 : y0 + side, x0 : x0 + side], np.float32)
    full = predict_full(model, crop, normalize=units)[0]
    with quiet_edges():
        tiled = predict_tiled(model, crop, tile_size=tile, overlap=overlap, mode=mode, normalize=units)[0]
    return float(np.abs(tiled - full).max())


@contextlib.contextmanager
def quiet_edges() -> Iterator[None]:
    """Without the tiler's warning that the model wraps the far side into the edges: the
    command measures the blend against whole-image inference and says how far, instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*output at the image's edges", category=RuntimeWarning)
        yield


def tile_plan(model: Any, channels: int, cfg: Any) -> dict[str, float]:
    """Tile size (the largest within --max-memory unless --tile), the smallest exact
    overlap (unless --overlap), a batch size that keeps within the budget and the model's
    output channels; refuses crop mode for a model no crop-and-stitch can be exact for."""
    from cpikan.tiling import plan_tiles, resolve
    from cpikan.tiling.check import parse_bytes

    expected = getattr(model, "in_channels", None)
    if expected is not None and expected != channels:
        raise io.InputError(f"--model: the model expects {expected} input channels, the data has {channels} "
                            f"({len(cfg.wavelengths)} wavelengths × 4 steps)")
    try:
        geo = resolve(model, channels)
    except (RuntimeError, ValueError) as exc:
        raise io.InputError(f"--model: fails on {channels}-channel input: {str(exc).splitlines()[0]}") from None
    if cfg.mode == "crop" and not geo.equivariant:
        raise io.InputError(f"--model: {type(model).__name__} is not shift-equivariant (suspected: {geo.cause}), "
                            "so no tiling can equal whole-image inference: use --mode hann (blended tiles, not exact; "
                            "the run measures how far)")
    if cfg.mode == "crop" and geo.edges:
        raise io.InputError(f"--model: {type(model).__name__}'s output at the wafer's edges depends on its far side "
                            f"(suspected: {geo.edges}), so no tiling can equal whole-image inference within "
                            f"{geo.radius} px of the edges: use --mode hann to run it anyway (the run measures how far)")
    budget = parse_bytes(cfg.max_memory)
    overlap = cfg.overlap if cfg.overlap is not None else 2 * (-(-geo.radius // geo.factor) * geo.factor)
    need = overlap + 2 * geo.factor  # the smallest tile with a core beside the overlap
    if cfg.tile is None and geo.tile_bytes(need, channels) > budget:
        mb = max(1, -(-geo.tile_bytes(need, channels) // 2**20))
        raise io.InputError(f"--max-memory {cfg.max_memory}: the smallest tile with the {overlap} px overlap, "
                            f"{need} px, needs {mb} MB; allow that much or more, or give --tile (and --overlap)")
    tile = cfg.tile or geo.largest_tile(channels, budget)
    if tile <= overlap:
        raise io.InputError(f"--tile: {tile} px leaves no core beside the overlap {overlap} px "
                            f"(the model's exact minimum); use --tile ≥ {overlap + 2 * geo.factor}")
    try:  # the tiler's own checks (the overlap a crop needs for this model), before any wafer is read
        plan_tiles(tile, tile, tile_size=tile, overlap=overlap, mode=cfg.mode,
                   radius=geo.radius if cfg.mode == "crop" else 0, factor=geo.factor)
    except ValueError as exc:
        raise io.InputError(str(exc).replace("overlap:", "--overlap:", 1).replace("tile_size:", "--tile:", 1)) from None
    batch = max(1, min(4, budget // max(geo.tile_bytes(tile, channels), 1))) if geo.batches else 1
    return {"tile": float(tile), "overlap": float(overlap), "batch_size": float(batch),
            "out_channels": float(geo.out_channels)}


def own_model_files(cfg: Any) -> dict[str, Path]:
    """A ``MODULE:FACTORY`` model's source files (its own and the local modules it imported,
    by path from where it imports) and its weights, by name."""
    from cpikan import refs

    if not refs.is_ref(cfg.model):
        return {}
    files = refs.local_files(cfg.model)
    if cfg.weights:
        files[Path(cfg.weights).name] = Path(cfg.weights)
    return files
