"""Reconstruct wafers' height maps from their bucket images: the lab's daily job.

    python -m studies.reconstruct WAFER... --out DIR [--model classical|best|RUN_ID|MODULE:FACTORY]
        [--weights W.safetensors] [--mode crop|hann|gaussian|constant]
        [--pattern '*.tif'] [--order laser-major|bucket-major] [--wavelengths 5.0,5.5,6.05,6.655] [--h-min UM --h-max UM]
        [--pixel-pitch UM] [--tile N | --max-memory 512MB] [--overlap N] [--no-track]
    torchrun --standalone --nproc-per-node N -m studies.reconstruct …   (one image's rows and tiles split
        across N processes, gloo on the CPU, NCCL on GPUs; output identical to one process
        with the same threads per process: oneDNN rounds differently with another count)

WAFER: a folder of 16 bucket images (TIFF/PNG/BMP, 8- or 16-bit or float TIFF, laser-major in
name order, numbers read as numbers so ``b2`` comes before ``b10``), one multi-page TIFF holding
the 16 buckets as pages in file order (an ImageJ hyperstack too), or a (16, H, W) ``.npy``
(``--order bucket-major`` when the files hold one phase step's lasers together: a wafer plainly
in the other order is refused, naming it);
either byte order, any TIFF compression. ``wavelengths.txt`` (µm, laser order) in the
wafer's folder, or beside the TIFF or ``.npy`` file, sets the lasers (optional; 4 lasers × 4
steps = 16 buckets by default).

``--model``: the joint fringe-order search (``classical``, default), the best
``psi_pretrain`` run trained for the wafer's wavelengths (``best``), a run ID (weights as safetensors; nothing is unpickled;
fed the intensity units it was trained on: 16-bit counts / 256, 8-bit counts as they are),
or your own model, ``mylab.models:make_unet`` or ``path/to/unet.py:make_unet`` (or a class with
literal arguments, ``unet.py:UNet(in_channels=16)``): a callable
returning an ``nn.Module`` that maps (N, 16, H, W) float32 intensities (the files' counts, laser-major)
to (N, K, H, W) with the height in µm in channel 0; ``--weights`` loads a safetensors state
dict into it (a prefix every key shares, ``module.`` or ``net.``, is dropped). Tiles are
exact (crop mode) for a shift-equivariant model; one that is not is refused with the cause
unless ``--mode hann`` (blended tiles, close to but not equal to whole-image inference;
the run logs how far, ``blend_vs_full_um``, measured on a crop of the wafer).

Heights are searched in [--h-min, --h-max], by default ± the wavelengths' alias separation
around zero (≈ ±30 µm); pixels whose residual says no height in that range fits are flagged
in the mask, counted, and warned about: never a silent micrometre error. So are pixels whose
fringes are under 6× the buckets' own noise (at the pixel's brightness), clipped, absent, or whose
buckets are not numbers (NaN, Inf in a float file), or whose model height is not; flags.npy
says which.

Writes DIR/NAME/: height.npy (float32 memmap), height.tif (NaN where flagged; µm scale), mask.npy, flags.npy, preview.png (µm colour
bar), surface.vtu (ParaView; x, y in µm by --pixel-pitch), channels.npy (every output
channel, when the model has more than one), into DIR/NAME.part first and renamed when
complete. Each wafer is one MLflow run (experiment ``reconstruct``) with the input files'
sha256, the model's run linked (or your model's source file and weights, by sha256), the
tile plan, the height's mean, RMS about the mean and peak-to-valley over valid pixels,
seconds, Mpix/s and peak RSS; ``python -m tracking.replay RUN_ID`` reconstructs it again.

Exit status: 0 done, 2 bad input (nothing written), 1 a full disk (the outputs' space is reserved
before they are written, so it is said at the start), 130 interrupted (Ctrl-C, SIGTERM: the wafer
in progress is not written).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cpikan.arguments import ArgumentParser
from cpikan.psi import io
from cpikan.psi.physics import DEFAULT_PSI
from studies.reconstruct_model import (
    blend_error,
    check_units,
    load_model,
    model_units,
    own_model_files,
    psi_config,
    quiet_edges,
    tile_plan,
)
from tracking import interrupts, logs

EXPERIMENT = "reconstruct"
ENTRY_POINT = "studies.reconstruct:run"


@dataclass
class ReconstructConfig:
    model: str = "classical"
    weights: str | None = None
    mode: str = "crop"
    wavelengths: tuple[float, ...] = DEFAULT_PSI.wavelengths
    h_min: float | None = None
    h_max: float | None = None
    pixel_pitch_um: float = 1.0
    tile: int | None = None
    overlap: int | None = None
    max_memory: str = "512MB"
    pattern: str | None = None
    order: str = "laser-major"  # or bucket-major: how the files order the channels (io.ORDERS)
    inputs: list[str] = field(default_factory=list)


def prepare_model(cfg: ReconstructConfig) -> tuple[Any, str, dict[str, float]]:
    """(model, its run ID, tile plan), or (None, "", {}) for the classical search."""
    if cfg.model == "classical":
        return None, "", {}
    model, model_run = load_model(cfg.model, cfg.weights, tuple(cfg.wavelengths))
    trained = tuple(getattr(getattr(model, "cfg", None), "wavelengths", ()) or ())
    if len(trained) == len(cfg.wavelengths) and trained != tuple(cfg.wavelengths):  # (counts: tile_plan says)
        # as many lasers, other wavelengths: its fringe orders and features are for those
        raise io.InputError(f"--model {cfg.model}: trained for wavelengths {trained} µm, the wafer's are "
                            f"{tuple(cfg.wavelengths)}; use --model classical, or a model trained for these lasers")
    plan = tile_plan(model, psi_config(cfg).channels, cfg)
    if hasattr(model, "search_range"):  # PSINet: reconstruct_one sets the span it searches, per wafer
        plan["trained_h_max"] = float(model.h_max)  # its correction was learned on [0, h_max]
    return model, model_run, plan


def height_range(cfg: ReconstructConfig) -> tuple[float, float]:
    """[--h-min, --h-max], by default ± the wavelengths' alias separation around zero."""
    from cpikan.psi import classical

    sep = classical.alias_separation(psi_config(cfg))
    return (cfg.h_min if cfg.h_min is not None else -sep, cfg.h_max if cfg.h_max is not None else sep)


def reconstruct_one(src: Path, work: Path, cfg: ReconstructConfig, model: Any, plan: dict[str, float]) -> dict[str, float]:
    """One wafer into ``work`` (a fresh folder); returns its figures. Under torchrun every
    process computes its share of rows and tiles into the same memmaps; the leader prepares
    them and writes the outputs."""
    import numpy as np
    import torch

    from cpikan import distributed
    from cpikan.memory import new_memmap, peak_rss_mb, release_pages, strided_sample
    from cpikan.psi import classical
    from cpikan.tiling import predict_tiled

    pcfg = psi_config(cfg)
    shard = distributed.current()
    order = io.channel_order(cfg.order, len(pcfg.wavelengths), len(pcfg.steps))
    stacked = src if io.read_as_is(src, order) else work / "buckets.npy"
    failure: io.InputError | OSError | None = None
    sample = None
    if shard.leader:
        try:
            io.stack_wafer(src, pcfg.channels, cfg.pattern, stacked, order)
            sample = strided_sample(np.load(stacked, mmap_mode="r"), classical.SAMPLE)
            check_order(sample, pcfg, cfg.order, src)
            check_lasers(sample, pcfg, height_range(cfg), src)
            _, h, w = np.load(stacked, mmap_mode="r").shape
            new_memmap(work / "height.npy", np.float32, (h, w)).flush()
            new_memmap(work / "mask.npy", bool, (h, w)).flush()
            new_memmap(work / "flags.npy", np.uint8, (h, w)).flush()
            if plan.get("out_channels", 1) > 1:
                new_memmap(work / "channels.npy", np.float32, (int(plan["out_channels"]), h, w)).flush()
        except (io.InputError, OSError) as exc:  # a full disk too: the others must not wait for it
            failure = exc
    if not distributed.broadcast_flag(failure is None):
        raise failure or io.InputError(f"{src}: the leading process could not read it (see its error)")
    buckets = np.load(stacked, mmap_mode="r")
    _, h, w = buckets.shape
    height = np.load(work / "height.npy", mmap_mode="r+")
    mask = np.load(work / "mask.npy", mmap_mode="r+")
    flags = np.load(work / "flags.npy", mmap_mode="r+")
    h_min, h_max = height_range(cfg)
    t0 = time.perf_counter()
    if sample is None:  # the leader read it to check the order; one read per process
        sample = strided_sample(buckets, classical.SAMPLE)
    clip = classical.saturation_level(buckets)
    shifter = classical.step_error(sample, pcfg, saturation=clip)
    classical.reconstruct(buckets, pcfg, h_min=h_min, h_max=h_max, out=height, mask_out=mask, flags_out=flags,
                          saturation=clip, shifter_error=shifter, shard=shard, workers=torch.get_num_threads())
    if model is not None:  # the learned height; the classical pass gave the mask
        # every process's classical rows are in before any tile overwrites them: the two
        # passes split the image differently (rows vs tile bands), so a late classical chunk
        # would otherwise overwrite another process's model output
        distributed.barrier()
        if hasattr(model, "search_range"):  # only the heights this wafer has: fewer fringe orders to try
            model.search_range = valid_span(height, mask, h_min, h_max)
        k = int(plan["out_channels"])
        out = np.load(work / "channels.npy", mmap_mode="r+") if k > 1 else height.reshape(1, h, w)
        units = model_units(cfg, buckets.dtype)
        try:
            with quiet_edges():  # blended: the run measures how far from whole-image inference, edges included
                predict_tiled(model, buckets, tile_size=int(plan["tile"]), overlap=int(plan["overlap"]),
                              mode=cfg.mode, batch_size=int(plan["batch_size"]), out=out, shard=shard,
                              device=distributed.device(), normalize=units)
        except ValueError as exc:
            raise io.InputError(str(exc).splitlines()[0]) from None
        if cfg.mode != "crop":
            plan = {**plan, "blend_vs_full_um": blend_error(model, buckets, plan, cfg.mode, units)}
        if k > 1:  # channel 0 is the height; channels.npy keeps them all
            out.flush()
            distributed.barrier()
            if shard.leader:
                for r0 in range(0, h, 1024):
                    height[r0 : r0 + 1024] = out[0, r0 : r0 + 1024]
                    release_pages(out)
            del out
    for arr in (height, mask, flags):
        arr.flush()
    distributed.barrier()
    seconds = time.perf_counter() - t0
    figures = {"mpix": h * w / 1e6, "seconds": seconds, "mpix_per_s": h * w / 1e6 / max(seconds, 1e-9),
               "peak_rss_gb": peak_rss_mb() / 1024, "h_min": h_min, "h_max": h_max,
               "processes": float(shard.world), "tile": 0.0, "overlap": 0.0, "batch_size": 0.0, **plan,
               **step_figures(shifter, pcfg)}
    if not shard.leader:
        return figures
    flagged, total, squares, lo, hi = 0, 0.0, 0.0, np.inf, -np.inf
    causes = dict.fromkeys(classical.FLAG_NAMES, 0)
    for r0 in range(0, h, 1024):  # row blocks, pages released: the mask is 268 MB at 16384²
        valid = mask[r0 : r0 + 1024]
        why = flags[r0 : r0 + 1024]
        rows = np.asarray(height[r0 : r0 + 1024], np.float64)
        if model is not None:  # a valid pixel whose model height is NaN or ∞ (the log of a dark pixel) is not
            bad = valid & ~np.isfinite(rows)
            valid[bad], why[bad] = False, classical.MODEL_NOT_FINITE
        flagged += int(valid.size - np.count_nonzero(valid))
        for bit in causes:
            causes[bit] += int(np.count_nonzero(why == bit))
        hv = rows[valid]
        if hv.size:
            total, squares = total + hv.sum(), squares + np.square(hv).sum()
            lo, hi = min(lo, float(hv.min())), max(hi, float(hv.max()))
        for arr in (mask, flags, height):
            release_pages(arr)
    n = h * w - flagged
    stats = {"height_mean_um": total / n, "height_rms_um": float(np.sqrt(max(squares / n - (total / n) ** 2, 0.0))),
             "height_pv_um": hi - lo, "height_min_um": lo, "height_max_um": hi} if n else {}
    if n:
        lasers = classical.wavelength_error(sample, pcfg, h_min, h_max, saturation=clip)
        stats.update(wavelength_figures(lasers, pcfg, float(np.sqrt(squares / n))))
    stats["fringe_snr"] = classical.fringe_snr(sample, pcfg, saturation=clip)
    io.write_tiff(work / "height.tif", height, mask, cfg.pixel_pitch_um)
    io.write_preview(work / "preview.png", height, mask, cfg.pixel_pitch_um)
    io.write_vtk(work / "surface.vtu", height, mask, cfg.pixel_pitch_um, flags=flags)
    del buckets
    if stacked != src:
        stacked.unlink()  # the stacked input: a scratch file
    return {**figures, **stats, "flagged_pixels": float(flagged), "valid_fraction": 1 - flagged / (h * w),
            **{f"flagged_{classical.FLAG_NAMES[bit]}": float(n) for bit, n in causes.items()}}


#: a closure this large a part of the fringes' power, as the files are read, is not noise
ORDER_RATIO = 0.05


def check_order(sample: Any, pcfg: Any, order: str, src: Path) -> None:
    """Refuse a wafer plainly in the other channel order: read as ``order`` its fringes are
    noise (:func:`classical.closure_ratio` over ``ORDER_RATIO``), read the other way ten
    times less so. Files named step first, or an ImageJ hyperstack with the lasers as its
    channels, are bucket-major; said before any height is computed, not as every pixel
    flagged noisy after it."""
    import numpy as np

    from cpikan.psi import classical

    lasers, steps = len(pcfg.wavelengths), len(pcfg.steps)
    other = next(o for o in io.ORDERS if o != order)
    read_back = np.argsort(io.channel_order(order, lasers, steps))  # file channel → stacked channel
    as_read = classical.closure_ratio(sample, pcfg)
    other_way = classical.closure_ratio(sample[read_back[io.channel_order(other, lasers, steps)]], pcfg)
    if as_read > ORDER_RATIO and other_way * 10 < as_read:
        raise io.InputError(f"--order: {src.name} read {order} does not look like fringes (closure {as_read:.2f} of "
                            f"the fringes' power, noise is under 0.01; read {other}: {other_way:.3f}); if its files "
                            f"hold one phase step's lasers together, pass --order {other}")


def check_lasers(sample: Any, pcfg: Any, span: tuple[float, float], src: Path) -> None:
    """Refuse a wafer whose lasers are plainly in another order than its wavelengths: as
    given, most pixels of a sample fit no height in ``span`` (median joint residual over
    ``MAX_RESIDUAL``), while with the wavelengths in some other order they fit (a quarter of
    it). Said before any height is computed, naming the order that fits, not as every pixel
    flagged ``no_height`` after it."""
    import itertools

    import numpy as np

    from cpikan.psi import classical

    with np.errstate(invalid="ignore", divide="ignore"):
        phi, mod, mean, _ = classical.fringes(sample, pcfg)
        seen = classical.contrast(mod, mean) >= 0.02
    seen &= classical.finite(sample)
    if seen.sum() < 64:  # too few fringes to judge
        return
    phi = phi[:, seen]
    given = tuple(pcfg.wavelengths)

    def misfit(waves: tuple[float, ...]) -> float:
        res = np.empty(phi.shape[1:])
        classical.height_from_phase(phi, replace(pcfg, wavelengths=waves), *span, residual=res)
        return float(np.median(res))

    as_given = misfit(given)
    if as_given <= classical.MAX_RESIDUAL:
        return
    best = min(itertools.permutations(given), key=misfit)
    if best != given and misfit(best) <= classical.MAX_RESIDUAL / 4:
        raise io.InputError(f"--wavelengths: {src.name}'s lasers are not in the order {', '.join(map(str, given))} µm "
                            f"(most pixels fit no height: median residual {as_given:.2f} rad²); in the order "
                            f"{', '.join(map(str, best))} µm they fit ({misfit(best):.3f}): give the wavelengths in the "
                            "files' laser order (--wavelengths, or wavelengths.txt)")


def valid_span(height: Any, mask: Any, h_min: float, h_max: float, margin: float = 1.0) -> tuple[float, float]:
    """[lowest, highest] classical height over valid pixels, ± ``margin`` µm, within [h_min,
    h_max]. The model's own fringe-order search over this span finds the classical order at
    every valid pixel (the best candidate of the wider range lies inside it) with fewer
    candidates: a wafer of 0 … 25 µm tries 8 orders, not the full ±30 µm's 26."""
    import numpy as np

    from cpikan.memory import release_pages

    lo, hi = np.inf, -np.inf
    for r0 in range(0, height.shape[0], 1024):  # row blocks, pages released (every process reads it all)
        valid = np.asarray(mask[r0 : r0 + 1024])
        if valid.any():
            rows = np.asarray(height[r0 : r0 + 1024])[valid]
            lo, hi = min(lo, float(rows.min())), max(hi, float(rows.max()))
        release_pages(mask)
        release_pages(height)
    return (h_min, h_max) if lo > hi else (max(h_min, lo - margin), min(h_max, hi + margin))


def validate(args: argparse.Namespace) -> ReconstructConfig:
    """Everything checkable before anything is written; InputError otherwise."""
    from cpikan import refs
    from cpikan.tiling import MODES

    # paths absolute: a replay from another folder reads and builds the same
    cfg = ReconstructConfig(model=refs.absolute_ref(args.model), weights=args.weights and str(Path(args.weights).resolve()),
                            mode=args.mode, pixel_pitch_um=args.pixel_pitch, tile=args.tile,
                            overlap=args.overlap, max_memory=args.max_memory, pattern=args.pattern, h_min=args.h_min, h_max=args.h_max,
                            order=args.order,
                            inputs=[str(Path(p).resolve()) for p in args.inputs])
    if not args.pixel_pitch > 0:
        raise io.InputError(f"--pixel-pitch: must be > 0 µm, got {args.pixel_pitch}")

    if args.weights is not None and not refs.is_ref(args.model):
        raise io.InputError(f"--weights: only with --model MODULE:FACTORY (a run's model carries its own), "
                            f"got --model {args.model}")
    if args.mode not in MODES:
        raise io.InputError(f"--mode: unknown {args.mode!r}; allowed: {', '.join(MODES)}")
    io.channel_order(args.order, 1)  # a known order, or the one-line error
    if args.tile is not None and args.tile < 16:
        raise io.InputError(f"--tile: must be ≥ 16 pixels, got {args.tile}")
    from cpikan.tiling.check import parse_bytes

    try:
        parse_bytes(args.max_memory)
    except ValueError:
        raise io.InputError(f"--max-memory: expected a size like 1GB or 800MB, got {args.max_memory!r}") from None
    if args.h_min is not None and args.h_max is not None and not args.h_min < args.h_max:
        raise io.InputError(f"--h-min/--h-max: need h_min < h_max, got {args.h_min} and {args.h_max}")
    waves = None
    if args.wavelengths:
        try:
            waves = tuple(float(v) for v in args.wavelengths.split(","))
        except ValueError:
            raise io.InputError(f"--wavelengths: expected numbers in µm like 5.0,5.5,6.05,6.655, got {args.wavelengths!r}") from None
        io.check_wavelengths(waves, "--wavelengths")
    for p in args.inputs:
        src = Path(p)
        if not src.exists():
            raise io.InputError(f"{src}: no such folder or file (a folder of bucket images, a multi-page TIFF or a .npy)")
        holder = src if src.is_dir() else src.parent  # beside the buckets, or beside the stack file
        found = io.read_wavelengths(holder)
        if found and waves and found != waves:
            raise io.InputError(f"{holder / 'wavelengths.txt'}: {found} differs from "
                                f"{'--wavelengths' if args.wavelengths else 'another wafer'}'s {waves}")
        waves = waves or found
    if waves:
        cfg.wavelengths = waves
    channels = psi_config(cfg).channels
    for p in args.inputs:
        io.wafer_files(Path(p), channels, args.pattern)
        check_units(Path(p), cfg, channels, args.pattern)
    io.check_writable(Path(args.out))
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m studies.reconstruct", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="WAFER")
    ap.add_argument("--out", required=True, help="output folder (one subfolder per wafer)")
    ap.add_argument("--model", default="classical",
                    help="classical (default), best, a psi_pretrain run ID, or your own MODULE:FACTORY / FILE.py:FACTORY")
    ap.add_argument("--weights", default=None, help="safetensors state dict for a MODULE:FACTORY model")
    ap.add_argument("--mode", default="crop", help="crop (default: exact for a shift-equivariant model) or a blending "
                    "window (hann, gaussian, constant) for a model that is not")
    ap.add_argument("--pattern", default=None, help="glob selecting the bucket files (default: every image)")
    ap.add_argument("--order", default="laser-major", help="how the files order the channels: laser-major (default: "
                    "a laser's buckets together) or bucket-major (a phase step's lasers together)")
    ap.add_argument("--wavelengths", default=None, help="µm, laser order (default: wavelengths.txt or 5.0,5.5,6.05,6.655)")
    ap.add_argument("--h-min", type=float, default=None, help="lowest height searched, µm")
    ap.add_argument("--h-max", type=float, default=None, help="highest height searched, µm")
    ap.add_argument("--pixel-pitch", type=float, default=1.0, help="µm per pixel (the scale of surface.vtu, preview.png and height.tif)")
    ap.add_argument("--tile", type=int, default=None, help="tile size for a model (default: the largest within --max-memory)")
    ap.add_argument("--max-memory", default="512MB", help="budget for one batch of model tiles (default 512MB)")
    ap.add_argument("--overlap", type=int, default=None, help="tile overlap (default: the smallest exact one)")
    ap.add_argument("--no-track", action="store_true", help="do not log MLflow runs")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logs.configure(args.verbose)
    from cpikan import distributed
    from cpikan.memory import return_freed_memory

    return_freed_memory()  # stages take turns in RSS instead of adding up (peak RSS is the budget)

    interrupts.sigterm_as_ctrl_c()
    shard = distributed.init_from_env()  # a world of one unless launched by torchrun
    try:
        return run_all(args, shard)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; the wafer's .part is gone already
        if shard.leader:
            done = f" (those done stay in {args.out})" if Path(args.out).is_dir() else ""
            print(f"interrupted: the wafer in progress was not written{done}", file=sys.stderr)
        return 130
    finally:
        distributed.finish()


def run_all(args: argparse.Namespace, shard: Any) -> int:
    """Every wafer in turn; under torchrun the leader talks and writes, all processes compute."""
    from cpikan import distributed
    from tracking.store import TrackingError

    def fail(exc: Exception) -> int:
        if shard.leader:
            print(f"error: {exc}", file=sys.stderr)
        return 2

    out = Path(args.out)
    made = not out.exists()  # by this command: removed again if a refusal leaves it empty
    try:
        cfg = validate(args)
        model, model_run, plan = prepare_model(cfg)
        if model is not None and cfg.mode != "crop" and shard.world > 1:
            raise io.InputError(f"--mode {cfg.mode}: blended tiles overlap, so {shard.world} processes cannot share "
                                "them; run one process (or crop mode, for a shift-equivariant model)")
        io.check_writable(out, create=True)
    except (io.InputError, TrackingError) as exc:
        return fail(exc)
    if model is not None:
        model.to(distributed.device())
    with contextlib.ExitStack() as held:  # a lock per wafer, to the end: a second command on it is refused
        for p in args.inputs:
            src = Path(p)
            name = src.stem.removesuffix(".ome") if src.is_file() else src.name  # OME-TIFF: x.ome.tif
            work, final = out / f"{name}.part", out / name
            refusal: io.InputError | None = None
            if shard.leader:
                try:
                    held.enter_context(lock_wafer(out, name))
                    shutil.rmtree(work, ignore_errors=True)  # a part of ours (the lock says), left by a crash
                    work.mkdir(parents=True)
                except io.InputError as exc:
                    refusal = exc
            if not distributed.broadcast_flag(refusal is None):
                if shard.leader:
                    remove_if_made(out, made)
                return fail(refusal or io.InputError(f"{name}: the leading process refused it (see its error)"))
            try:
                figures = track(src, work, cfg, model, plan, model_run, args.no_track or not shard.leader)
            except BaseException as exc:  # Ctrl-C too: nothing of this wafer stays, nor an --out we made for it
                if shard.leader:
                    shutil.rmtree(work, ignore_errors=True)
                    remove_if_made(out, made)  # earlier wafers' outputs stay
                if isinstance(exc, io.InputError | TrackingError):
                    return fail(exc)
                if isinstance(exc, OSError) and disk_full(exc, out):
                    if shard.leader:
                        said = exc.strerror if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"no space left on {out} ({exc})"
                        print(f"error: --out: {said}; {name} was not written (free space, or --out elsewhere)",
                              file=sys.stderr)
                    return 1
                raise
            if shard.leader:
                report_wafer(final, work, figures, cfg, shard)
    return 0


def disk_full(exc: OSError, out: Path) -> bool:
    """ENOSPC, or (numpy's tofile under tifffile) a short write with no errno on a full disk."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or shutil.disk_usage(out).free < 1 << 20


@contextlib.contextmanager
def lock_wafer(out: Path, name: str) -> Iterator[None]:
    """An exclusive lock on writing ``name`` into ``out`` (``out/.NAME.lock``, there while
    held): two commands on one wafer once shared its ``.part`` folder, the second deleting the
    first's and the first publishing the second's half-written files as its own."""
    import fcntl
    import os

    path = out / f".{name}.lock"
    while True:
        f = open(path, "a+")  # noqa: SIM115 — held while the context is
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise io.InputError(f"--out: {name} is being written into {out} by another command right now; wait "
                                "for it to finish, or give another --out") from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()  # the holder removed it as we opened it: take the new one
    try:
        yield
    finally:  # removed while still held: whoever opened it before sees it is gone
        path.unlink(missing_ok=True)
        f.close()


def remove_if_made(out: Path, made: bool) -> None:
    """``out`` again, when this command made it and it holds nothing but our locks."""
    if made and not any(p for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".lock"))):
        shutil.rmtree(out, ignore_errors=True)


def report_wafer(final: Path, work: Path, figures: dict[str, float], cfg: ReconstructConfig, shard: Any) -> None:
    """The finished wafer put in place of an older one, and its summary and warnings."""
    name = final.name
    if final.exists():
        old = final.with_name(f"{name}.old")
        final.rename(old)
        work.rename(final)
        shutil.rmtree(old)
    else:
        work.rename(final)
    flagged = int(figures["flagged_pixels"])
    procs = f", {shard.world} processes" if shard.world > 1 else ""
    print(f"{name}: {figures['mpix']:.1f} Mpix in {figures['seconds']:.1f} s ({figures['mpix_per_s']:.2f} Mpix/s, "
          f"peak RSS {figures['peak_rss_gb']:.2f} GB{procs}) → {final}")
    if "blend_vs_full_um" in figures:
        print(f"  warning: --mode {cfg.mode} blends overlapping tiles: the height is close to, not equal to, "
              f"whole-image inference (about {figures['blend_vs_full_um']:.2g} µm apart on a crop of this "
              "wafer)", file=sys.stderr)
    trained = figures.get("trained_h_max")
    if trained is not None and "height_min_um" in figures and not (
            0 <= figures["height_min_um"] and figures["height_max_um"] <= trained):
        print(f"  note: heights span {figures['height_min_um']:.2f} … {figures['height_max_um']:.2f} µm; the model "
              f"learned its correction on 0 … {trained:g} µm, so outside that it is extrapolated (the fringe "
              "order is not: it is searched in the command's range, as for the classical pass)", file=sys.stderr)
    if figures.get("step_error_nm", 0) > WARN_NM:
        print(f"  warning: the phase steps are off π/2 (the closure follows the phase: up to "
              f"{figures['step_error_deg']:.1f}° for laser {int(figures['step_error_laser'])}), which puts about "
              f"{figures['step_error_nm']:.0f} nm of systematic error into the heights; recalibrate the phase "
              "shifter", file=sys.stderr)
    if figures.get("wavelength_error_nm", 0) > WARN_NM:
        k = int(figures["wavelength_error_laser"])
        print(f"  warning: laser {k}'s wavelength looks {figures['wavelength_error_pct']:+.2f} % off the given "
              f"{cfg.wavelengths[k - 1]:g} µm beside the other lasers (its phase drifts with the height), which "
              f"puts about {figures['wavelength_error_nm']:.0f} nm of error into the heights (they scale); check "
              "the wavelengths (--wavelengths, wavelengths.txt) or the laser", file=sys.stderr)
    if flagged:
        print(f"  warning: {flagged} pixels ({100 * (1 - figures['valid_fraction']):.2f} %) flagged in mask.npy "
              f"(why: flags.npy): {flag_causes(figures)}", file=sys.stderr)


#: a systematic height error (phase shifter, a laser off its wavelength) above this is warned about
WARN_NM = 2.0


def step_figures(steps: Any, pcfg: Any) -> dict[str, float]:
    """The phase shifter's error as the wafer shows it (classical.step_error): the largest
    per laser, in degrees, and the systematic height error it puts in, λ/4π · |(p, q)|
    averaged over lasers (measured: 10.4 predicted for 10.7 nm RMS at 1 % off π/2)."""
    import math

    import numpy as np

    size = np.hypot(steps[:, 0], steps[:, 1])
    if np.isnan(size).all():  # a flat wafer: the phases do not spread enough to tell
        return {}
    worst = int(np.nanargmax(size))
    lam = np.asarray(pcfg.wavelengths, np.float64)
    return {"step_error_deg": math.degrees(float(size[worst])), "step_error_laser": float(worst + 1),
            "step_error_nm": 1000 * float(np.nanmean(lam / (4 * math.pi) * size))}


def wavelength_figures(eps: Any, pcfg: Any, rms_um: float) -> dict[str, float]:
    """The laser whose wavelength looks most off beside the others' (classical.wavelength_error),
    in %, and the height error that puts in: a laser off by ε moves every height by
    −ε·w/Σw·h (w = 1/λ², the joint search's weights), so about |Σ w ε / Σ w| × the heights'
    RMS about zero (0.5 % off: 10.6 nm predicted, 10.7 measured)."""
    import numpy as np

    if np.isnan(eps).all():  # the wafer's heights span too little to tell
        return {}
    w = 1 / np.asarray(pcfg.wavelengths, np.float64) ** 2
    worst = int(np.nanargmax(np.abs(eps)))
    return {"wavelength_error_pct": 100 * float(eps[worst]), "wavelength_error_laser": float(worst + 1),
            "wavelength_error_nm": 1000 * abs(float((w * eps).sum() / w.sum())) * rms_um}


def flag_causes(figures: dict[str, float]) -> str:
    """Why pixels were flagged (the run's ``flagged_<cause>`` figures, one cause per pixel:
    they add up to flagged_pixels), most first, each with what to do about it."""
    from cpikan.psi.classical import MIN_SNR

    def most(cause: str) -> bool:  # then the files, not the wafer, are the likelier cause
        return figures.get(f"flagged_{cause}", 0) > 0.5 * figures["mpix"] * 1e6

    advice = {"low_contrast": "no fringes there (background, dust, a dark or diffuse spot)",
              "noisy": f"fringes under {MIN_SNR:g}× the noise the buckets show (longer exposure or averaging"
                       + ("; so many that the buckets may be out of order: laser-major, each laser's steps in "
                          "turn, or --order bucket-major?)" if most("noisy") else ")"),
              "saturated": "a bucket at the camera's maximum count (lower the exposure)",
              "not_finite": "a bucket that is NaN or infinite (a flat-field division by zero in the float files?)",
              "model_not_finite": "the model's height is NaN or infinite (what does it do with these pixels' "
                                  "counts: the log of a dark pixel?)",
              "no_height": f"no height in [{figures['h_min']:g}, {figures['h_max']:g}] µm fits every laser "
                           "(widen --h-min/--h-max if the wafer is taller"
                           + ("; so many that the wavelengths may not be the files' lasers, in their order)"
                              if most("no_height") else ")")}
    counts = sorted(((int(figures.get(f"flagged_{k}", 0)), k) for k in advice), reverse=True)
    return "; ".join(f"{n} {advice[k]}" for n, k in counts if n)


def track(src: Path, work: Path, cfg: ReconstructConfig, model: Any, plan: dict[str, float], model_run: str,
          off: bool) -> dict[str, float]:
    """One wafer as one MLflow run (or untracked with ``off``). The run's config names this
    wafer alone and the model's run ID (``best`` resolved), so ``tracking.replay`` can
    reconstruct it again."""
    if off:
        return reconstruct_one(src, work, cfg, model, plan)
    from tracking.tracker import Tracker

    one = replace(cfg, inputs=[str(src.resolve())], model=model_run or cfg.model)
    with Tracker(EXPERIMENT, config=one, entry_point=ENTRY_POINT, run_name=src.name, tags={"wafer": src.name}) as run:
        figures = reconstruct_logged(one, run, work, model, plan, model_run)
        run.set_tags({"outputs": str(work.parent / work.name.removesuffix(".part"))})
    return figures


def reconstruct_logged(cfg: ReconstructConfig, run: Any, work: Path, model: Any, plan: dict[str, float],
                       model_run: str) -> dict[str, float]:
    """``cfg``'s one wafer into ``work``, logged on ``run``: input and model files by sha256,
    the model's run linked, results (flagged pixels and why, height statistics) and measurements."""
    from tracking.links import auto_link

    src = Path(cfg.inputs[0])
    for f in io.wafer_files(src, psi_config(cfg).channels, cfg.pattern):
        run.log_dataset(f, f.name, context="input")
    if model_run:
        auto_link(model_run, run.run_id, role="model", metric="rmse_nm")
    own = own_model_files(cfg)  # the user's model: its code (helper modules too) and weights, by content
    if own:
        run.log_datasets(own, context="model")
    figures = reconstruct_one(src, work, cfg, model, plan)
    results = ("flagged_pixels", "valid_fraction", "height_mean_um", "height_rms_um", "height_pv_um", "height_min_um",
               "height_max_um", "blend_vs_full_um", "step_error_deg", "step_error_laser", "step_error_nm",
               "wavelength_error_pct", "wavelength_error_laser", "wavelength_error_nm", "fringe_snr")
    causes = {k: v for k, v in figures.items() if k.startswith("flagged_") and k != "flagged_pixels"}
    run.log_results({"image_mpix": figures["mpix"], **{k: figures[k] for k in results if k in figures}, **causes},
                    {k: figures[k] for k in ("seconds", "mpix_per_s", "peak_rss_gb", "processes",
                                             "tile", "overlap", "batch_size")})
    if (work / "channels.npy").exists():
        run.set_tags({"out_channels": str(int(figures["out_channels"]))})
    run.log_artifact(work / "preview.png", "outputs")
    return figures


def run(config: ReconstructConfig, ctx: Any) -> dict[str, float]:
    """The entry point ``tracking.replay`` calls: the run's wafer again, with its model, into
    a scratch folder (the replay compares the results; the outputs are not kept)."""
    import tempfile

    model, model_run, plan = prepare_model(config)
    with tempfile.TemporaryDirectory() as tmp:
        return reconstruct_logged(config, ctx, Path(tmp), model, plan, model_run)


if __name__ == "__main__":
    # the module under its own name, so runs record studies.reconstruct's classes, not __main__'s
    from studies import reconstruct

    sys.exit(reconstruct.main())
