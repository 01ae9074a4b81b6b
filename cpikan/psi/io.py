"""Bucket images in, height maps out, in bounded memory.

Inputs: a folder of bucket images (TIFF, PNG, BMP; 8- or 16-bit greyscale, or float TIFFs;
counts in signed or wider integer pixels when they fit 16 bits; one file per channel,
laser-major in name order with numbers read as numbers, a ``*.tif``-style pattern selecting
them), one multi-page TIFF holding the buckets as pages in file order (an ImageJ
hyperstack, or pages written one by one, past any thumbnail; or one page whose pixels hold
the 16 buckets as samples, planar or interleaved: read in place, or decoded into a file),
or a (C, H, W) ``.npy`` array (opened as a
memmap). TIFFs in either byte order (ImageJ writes big-endian) and any compression
(LZW, Deflate, Zstd, JPEG: ``imagecodecs``). A folder or stack is copied channel by channel
into a (C, H, W) memmap of native uint8, uint16 or float32 next to the outputs, so no more
than one channel is in memory at once; a ``.npy`` already in one of those is read as it is.
``wavelengths.txt`` beside the buckets (numbers in µm, one per laser) overrides the
default wavelengths.

Every problem with the input is a :class:`InputError` naming the file and what is allowed.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpikan.memory import new_memmap, release_pages, strided_sample

SUFFIXES = (".tif", ".tiff", ".png", ".bmp")
ALLOWED = "integer counts (8- or 16-bit, or a signed or wider type holding 0 … 65535), or floats"


def pixel_type(dtype: np.dtype) -> np.dtype | None:
    """The type a file's pixels are read as (native byte order; floats as float32; counts
    in a signed or wider integer type, as LabVIEW's I16 images or 32-bit exports hold them,
    as 16-bit ones, signed 8-bit as 8-bit: :func:`counts` checks that they fit), or None
    when they are not intensities a reconstruction can read."""
    d = np.dtype(dtype)
    if d.kind == "u" and d.itemsize in (1, 2):
        return d.newbyteorder("=")
    if d.kind in "iu" and d.itemsize <= 8:
        return np.dtype(np.uint8 if d.itemsize == 1 else np.uint16)
    if d.kind == "f" and d.itemsize in (2, 4, 8):
        return np.dtype(np.float32)
    return None


def counts(block: np.ndarray, path: Path) -> np.ndarray:
    """``block`` as read, once integer counts held in a signed or wider type are checked to
    fit the unsigned type they are read as (assignment would wrap them round silently)."""
    d = block.dtype
    if d.kind not in "iu" or pixel_type(d) == d.newbyteorder("="):
        return block
    lo, hi, top = int(block.min(initial=0)), int(block.max(initial=0)), int(np.iinfo(pixel_type(d)).max)
    if lo < 0:
        raise InputError(f"{path}: negative counts (down to {lo}) in a signed {8 * d.itemsize}-bit image: a camera's "
                         f"counts saved as signed wrap round above {np.iinfo(d).max}, and dark-subtracted data "
                         "goes below 0; save the counts unsigned, or as floats")
    if hi > top:
        raise InputError(f"{path}: counts up to {hi} do not fit {8 * pixel_type(d).itemsize} bits "
                         f"({np.dtype(d)} pixels); save them as floats, or scaled to 16 bits")
    return block


def _depth(dtype: np.dtype) -> str:
    return "float" if dtype.kind == "f" else f"{dtype.itemsize * 8}-bit"


class InputError(ValueError):
    """The input files are not what a reconstruction can read."""


def bucket_files(folder: Path, channels: int, pattern: str | None = None) -> list[Path]:
    """The folder's bucket images in channel order; exactly ``channels`` of them."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of bucket images (or a .npy file)")
    found = folder.glob(pattern) if pattern else (p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    files = sorted((p for p in found if not p.name.startswith(".")), key=name_order)  # macOS's ._b00.tif twins
    if len(files) != channels:
        allowed = pattern or "*" + "|*".join(SUFFIXES)
        raise InputError(f"{folder}: {len(files)} bucket images match {allowed}, expected {channels} "
                         f"(lasers × buckets, laser-major in name order){_pattern_hint(files, channels)}")
    return files


def _pattern_hint(files: list[Path], channels: int) -> str:
    """What ``--pattern`` would pick the buckets out of a folder holding more images than
    buckets (an overview PNG, a dark frame), when their suffix tells them apart."""
    if len(files) <= channels:
        return ""
    by_suffix: dict[str, list[Path]] = {}
    for f in files:
        by_suffix.setdefault(f.suffix, []).append(f)
    for suffix, group in by_suffix.items():
        if len(group) == channels:
            others = [f.name for f in files if f.suffix != suffix]
            more = f", … ({len(others)} in all)" if len(others) > 3 else ""
            return f"; --pattern '*{suffix}' takes the {channels} {suffix} files, not {', '.join(others[:3])}{more}"
    return "; --pattern picks them (a glob such as '*_B*.tif')"


def wafer_files(src: Path, channels: int, pattern: str | None = None) -> list[Path]:
    """The files a wafer is read from, checked: a folder's bucket images in channel order,
    or the one multi-page TIFF or (C, H, W) ``.npy``."""
    if src.is_dir():
        return bucket_files(src, channels, pattern)
    if src.suffix == ".npy":
        open_npy(src, channels)
    elif src.suffix.lower() in (".tif", ".tiff"):
        tiff_stack(src, channels)
    else:
        raise InputError(f"{src}: a wafer is a folder of bucket images, a multi-page TIFF or a (C, H, W) .npy")
    return [src]


#: how a wafer's files order its channels: laser-major (channel = laser · buckets + bucket, the
#: default) or bucket-major (channel = bucket · lasers + laser: files named step first)
ORDERS = ("laser-major", "bucket-major")


def channel_order(order: str, lasers: int, buckets: int = 4) -> list[int]:
    """For each laser-major channel (laser · buckets + bucket), the file channel holding it."""
    if order not in ORDERS:
        raise InputError(f"--order: unknown {order!r}; allowed: {', '.join(ORDERS)}")
    if order == "laser-major":
        return list(range(lasers * buckets))
    return [k * lasers + l for l in range(lasers) for k in range(buckets)]


def stack_wafer(src: Path, channels: int, pattern: str | None, dest: Path, order: list[int] | None = None) -> None:
    """Check the wafer and copy its images into a (C, H, W) memmap at ``dest``, channel c
    from file channel ``order[c]`` (default: as they are; a ``.npy`` wafer in laser-major
    order is read as it is when :func:`read_as_is`)."""
    order = list(range(channels)) if order is None else order
    files = wafer_files(src, channels, pattern)
    if src.is_dir():
        stack_buckets([files[i] for i in order], dest)
    elif src.suffix != ".npy":
        stack_tiff(src, channels, dest, order)
    elif not read_as_is(src, order):  # big-endian, float64, another order …: converted strip by strip
        arr = open_npy(src, channels)
        out = new_memmap(dest, pixel_type(arr.dtype), arr.shape)
        rows = max(1, (32 << 20) // max(arr.shape[2] * arr.dtype.itemsize, 1))
        for i, j in enumerate(order):
            for r0 in range(0, arr.shape[1], rows):
                out[i, r0 : r0 + rows] = counts(arr[j, r0 : r0 + rows], src)
                release_pages(out)
                release_pages(arr)


def name_order(path: Path) -> tuple[object, ...]:
    """Sort key that reads numbers as numbers: ``b2`` before ``b10``, as a camera that does
    not zero-pad its counter means it (plain string order would put bucket 10 second)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def tiff_stack(path: Path, channels: int) -> tuple[int, ...]:
    """Check that ``path`` is one TIFF holding the ``channels`` buckets as pages of one size
    and pixel type (laser-major in file order; an ImageJ hyperstack's 4 × 4 pages too, or
    pages written one by one); returns (C, H, W)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            found = _locate(tif, path, channels)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 — any reader failure means an unreadable file
        raise InputError(f"{path}: unreadable or truncated TIFF ({type(exc).__name__}: {exc})") from None
    return (channels, *found.shape)


@dataclass
class _Found:
    """Where a TIFF holds its buckets: one series' samples (``planes`` empty), or a page
    per bucket, as (series, key) in file order."""

    series: Any
    planes: list[tuple[Any, int]]
    shape: tuple[int, int]


def _locate(tif: Any, path: Path, channels: int) -> _Found:
    """The buckets in an open TIFF: one series holding them all (pages, a hyperstack, one
    page's samples), else as many one-page series (tifffile writes a stack saved page by
    page so). Reduced-resolution pages (thumbnails, pyramid levels) are not buckets."""
    full = [s for s in tif.series if not s.keyframe.is_reduced] or list(tif.series)

    def dims(s: Any) -> list[int]:  # singleton axes (ImageJ's T, a trailing sample) say nothing
        return [n for n in s.shape if n != 1]

    for s in full:
        shape, axes = tuple(s.shape), s.axes
        if "S" in axes and shape[axes.index("S")] > 1:
            if _bucket_samples(axes, shape, channels):
                _check_type(s.dtype, path)
                return _Found(s, [], (shape[axes.index("Y")], shape[axes.index("X")]))
            continue
        d = dims(s)
        if len(d) >= 3 and math.prod(d[:-2]) == channels:
            _check_type(s.dtype, path)
            return _Found(s, [(s, j) for j in range(channels)], (d[-2], d[-1]))
    pages = [s for s in full if len(dims(s)) == 2]
    if len(pages) == channels == len(full) and len({(tuple(dims(s)), np.dtype(s.dtype)) for s in pages}) == 1:
        _check_type(pages[0].dtype, path)
        return _Found(pages[0], [(s, 0) for s in pages], tuple(dims(pages[0])))  # type: ignore[arg-type]
    first = full[0]
    shape, axes = tuple(first.shape), first.axes
    if "S" in axes and shape[axes.index("S")] > 1:
        raise InputError(f"{path}: colour pages ({shape[axes.index('S')]} samples); bucket images are greyscale")
    raise InputError(f"{path}: holds {len(tif.pages)} page(s) of shape {shape[-2:] if len(shape) >= 2 else shape} "
                     f"(series shape {shape}); a TIFF stack must hold {channels} greyscale pages of one size "
                     "(lasers × buckets, laser-major)")


def _check_type(dtype: Any, path: Path) -> None:
    if pixel_type(np.dtype(dtype)) is None:
        raise InputError(f"{path}: pixel type {np.dtype(dtype)}; allowed: {ALLOWED}")


def _bucket_samples(axes: str, shape: tuple[int, ...], channels: int) -> bool:
    """Whether a TIFF holds the buckets as the samples of one page (a 16-channel image,
    planar or interleaved): as many samples as channels, nothing else but rows and columns."""
    return (shape[axes.index("S")] == channels and "Y" in axes and "X" in axes
            and all(n == 1 for a, n in zip(axes, shape) if a not in "SYX"))


def _samples_in_place(series: Any, path: Path) -> np.ndarray | None:
    """An uncompressed one-page TIFF's samples as an (S, H, W) view of the file itself
    (:func:`_tiff_memmap`); None when the page is compressed."""
    arr = _tiff_memmap(path)
    if arr is None:
        return None
    keep = [i for i, a in enumerate(series.axes) if a in "SYX"]
    axes = "".join(series.axes[i] for i in keep)
    return np.moveaxis(arr.reshape([series.shape[i] for i in keep]), [axes.index(a) for a in "SYX"], [0, 1, 2])


def _copy_segments(page: Any, out: np.ndarray, order: list[int], path: Path) -> None:
    """Decode a compressed page strip by strip (or tile by tile) into ``out`` (C, H, W),
    sample ``order[c]`` into channel c: memory holds one strip, never the page."""
    channel = {j: i for i, j in enumerate(order)}
    _, h, w = out.shape
    for n, (segment, index, _shape) in enumerate(page.segments(maxworkers=1, buffersize=16 << 20)):
        if segment is None:
            continue
        segment = counts(segment, path)
        plane, y0, x0 = index[0], index[2], index[3]
        rows, cols = min(segment.shape[1], h - y0), min(segment.shape[2], w - x0)
        if page.planarconfig == 2:  # separate: one sample's plane per segment
            if plane in channel:
                out[channel[plane], y0 : y0 + rows, x0 : x0 + cols] = segment[0, :rows, :cols, 0]
        else:  # contiguous: every sample of these pixels
            for j, c in channel.items():
                out[c, y0 : y0 + rows, x0 : x0 + cols] = segment[0, :rows, :cols, j]
        if n % 64 == 63:
            release_pages(out)


def stack_tiff(path: Path, channels: int, dest: Path, order: list[int] | None = None) -> np.ndarray:
    """A multi-page TIFF's buckets as one (C, H, W) memmap at ``dest``, a page at a time
    (channel c from page ``order[c]``); buckets held as one page's samples, a row band at a time."""
    import tifffile

    c, h, w = tiff_stack(path, channels)
    with tifffile.TiffFile(path) as tif:
        found = _locate(tif, path, channels)
        series = found.series
        out = new_memmap(dest, pixel_type(series.dtype), (c, h, w))
        if not found.planes:  # the buckets as one page's samples
            picks = list(range(c)) if order is None else list(order)
            samples = _samples_in_place(series, path)  # a truncated file: InputError, as for pages
            try:
                if samples is None:
                    _copy_segments(tif.pages[0], out, picks, path)
                else:
                    rows = max(1, (32 << 20) // max(w * c * samples.dtype.itemsize, 1))  # ~32 MB bands
                    for r0 in range(0, h, rows):
                        out[:, r0 : r0 + rows] = counts(samples[picks, r0 : r0 + rows], path)
                        release_pages(out)
                        release_pages(samples)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{path}: unreadable or truncated ({type(exc).__name__}: {exc})") from None
            release_pages(out)
            return out
        for i, j in enumerate(range(c) if order is None else order):
            page, key = found.planes[j]
            try:
                plane = page.asarray(key=key).reshape(h, w)
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{path}: page {j} unreadable or truncated ({type(exc).__name__}: {exc})") from None
            out[i] = counts(plane, path)
            release_pages(out)
    return out


def _tiff_memmap(path: Path) -> np.ndarray | None:
    """An uncompressed, contiguous TIFF as a read-only memmap (a 16384² 16-bit channel is
    512 MB: never in memory at once); None when the file must be decoded."""
    import tifffile

    try:
        arr = tifffile.memmap(path, mode="r")
    except Exception:  # noqa: BLE001 — compressed, tiled or odd layouts: decode instead
        return None
    if arr.offset + arr.nbytes > path.stat().st_size:  # truncated: reading would fault
        raise InputError(f"{path}: unreadable or truncated image (file shorter than its pixel data)")
    return arr


def read_image(path: Path) -> np.ndarray:
    """One greyscale image (H, W) of a :func:`pixel_type` (a singleton sample or page axis
    dropped); uncompressed TIFFs as read-only memmaps."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = _tiff_memmap(path)
            if arr is None:
                arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later
                if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    raise InputError(f"{path}: a colour image (mode {im.mode}); bucket images are greyscale")
                if im.mode in ("P", "PA"):  # a palette's grey levels, not its indices, are the counts
                    arr = np.asarray(im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB"))
                else:
                    arr = np.asarray(im)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 — any reader failure means an unreadable file
        raise InputError(f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
        arr = grey_of(arr, path)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D greyscale image, got shape {arr.shape}")
    if pixel_type(arr.dtype) is None:
        raise InputError(f"{path}: pixel type {arr.dtype}; allowed: {ALLOWED}")
    return arr


def grey_of(arr: np.ndarray, path: Path) -> np.ndarray:
    """The grey channel of an image saved with colour or alpha channels, (H, W, 2–4): grey
    as RGB(A) or grey with alpha, as camera programs and image editors often save it. Its
    colour channels must be equal and its alpha one value: anything else is a colour or
    partly transparent image, refused with the first pixel that shows it. Read in strips,
    so a memory-mapped file is never in memory at once."""
    names = ("grey", "alpha") if arr.shape[-1] == 2 else ("red", "green", "blue", "alpha")[: arr.shape[-1]]
    colours = 1 if arr.shape[-1] == 2 else 3
    rows = max(1, (32 << 20) // max(arr.shape[1] * arr.shape[2] * arr.itemsize, 1))
    for r0 in range(0, arr.shape[0], rows):
        block = arr[r0 : r0 + rows]
        for c in range(1, arr.shape[-1]):
            ref = block[..., 0] if c < colours else arr[0, 0, c]
            differ = block[..., c] != ref
            if differ.any():
                r, col = (int(i) for i in np.argwhere(differ)[0])
                px = block[r, col]
                what = (f"a colour image ({names[c]} ≠ {names[0]}" if c < colours
                        else f"a partly transparent image ({names[c]} varies")
                raise InputError(f"{path}: {what}, first at row {r0 + r}, column {col}: "
                                 f"{', '.join(f'{n} {v}' for n, v in zip(names, px.tolist()))}); "
                                 "bucket images are greyscale")
        release_pages(arr)
    return arr[..., 0]


def stack_buckets(files: list[Path], dest: Path) -> np.ndarray:
    """The images as one (C, H, W) memmap at ``dest`` (one channel in memory at a time);
    all must share size and bit depth."""
    first = read_image(files[0])
    shape, dtype = first.shape, pixel_type(first.dtype)
    out = new_memmap(dest, dtype, (len(files), *shape))
    rows = max(1, (32 << 20) // max(shape[1] * dtype.itemsize, 1))  # ~32 MB strips
    for i, path in enumerate(files):
        arr, first = (first, None) if i == 0 else (read_image(path), None)
        if arr.shape != shape:
            raise InputError(f"{path}: size {arr.shape[1]} × {arr.shape[0]}, but {files[0].name} is "
                             f"{shape[1]} × {shape[0]}; all bucket images must have one size")
        if pixel_type(arr.dtype) != dtype:
            raise InputError(f"{path}: {_depth(arr.dtype)}, but {files[0].name} is {_depth(dtype)}; "
                             "all bucket images must have one bit depth")
        for r0 in range(0, shape[0], rows):  # written and read pages leave RSS strip by strip
            out[i, r0 : r0 + rows] = counts(arr[r0 : r0 + rows], path)
            release_pages(out)
            release_pages(arr)
        del arr
    return out


def open_npy(path: Path, channels: int) -> np.ndarray:
    """A (C, H, W) array file as a read-only memmap (in the file's own type)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[0] != channels:
        raise InputError(f"{path}: shape {arr.shape}, expected ({channels}, H, W) buckets, laser-major")
    if pixel_type(arr.dtype) is None:
        raise InputError(f"{path}: dtype {arr.dtype}; allowed: {ALLOWED}")
    return arr


def read_as_is(src: Path, order: list[int] | None = None) -> bool:
    """Whether a wafer is read where it lies: a ``.npy`` already of its :func:`pixel_type`
    and laser-major (else it is copied, converted, like a folder or a TIFF)."""
    if src.suffix != ".npy" or (order is not None and order != sorted(order)):
        return False
    dtype = np.load(src, mmap_mode="r", allow_pickle=False).dtype
    return dtype == pixel_type(dtype)


def first_channel(src: Path, channels: int, pattern: str | None = None, n: int = 64) -> np.ndarray:
    """About ``n`` × ``n`` evenly spread pixels of the wafer's first bucket image, in the
    file's type (to judge its units before anything is written)."""
    import tifffile

    if src.is_dir():
        img = read_image(bucket_files(src, channels, pattern)[0])
    elif src.suffix == ".npy":
        img = open_npy(src, channels)[0]
    else:
        _, h, w = tiff_stack(src, channels)
        with tifffile.TiffFile(src) as tif:
            found = _locate(tif, src, channels)
            series = found.series
            if not found.planes:  # the buckets as one page's samples
                samples = _samples_in_place(series, src)
                if samples is None:  # compressed: decode the first sample's plane (or the page)
                    with tempfile.TemporaryDirectory() as tmp:
                        first = new_memmap(Path(tmp) / "first.npy", pixel_type(series.dtype), (1, h, w))
                        _copy_segments(tif.pages[0], first, [0], src)
                        return strided_sample(first, n)[0].copy()
                return strided_sample(samples[:1], n)[0].copy()
            page, key = found.planes[0]
            img = page.asarray(key=key).reshape(h, w)
    return strided_sample(img[None], n)[0]  # row by row: a strided memmap read faults far more in


def read_wavelengths(folder: Path) -> tuple[float, ...] | None:
    """Wavelengths (µm) from ``folder/wavelengths.txt`` (the buckets' folder, or the one
    holding a stack file), if there is one."""
    path = folder / "wavelengths.txt"
    if not path.exists():
        return None
    try:
        values = tuple(float(v) for v in path.read_text().replace(",", " ").split())
    except ValueError:
        raise InputError(f"{path}: expected numbers (µm), one per laser") from None
    return check_wavelengths(values, str(path))


#: optical interferometry, deep UV to far infrared (µm): a value outside is in other units
WAVELENGTH_RANGE_UM = (0.1, 30.0)


def check_wavelengths(values: tuple[float, ...], field: str) -> tuple[float, ...]:
    """``values`` if they are wavelengths in µm; InputError naming ``field`` otherwise (a
    file in nm, 632.8 for a HeNe laser, would be searched as 632.8 µm and flag every pixel)."""
    lo, hi = WAVELENGTH_RANGE_UM
    if not values or any(not v > 0 for v in values):
        raise InputError(f"{field}: wavelengths must be positive numbers (µm), got {values}")
    odd = [v for v in values if not lo <= v <= hi]
    if odd:
        hint = f" (in nm? {odd[0]:g} nm is {odd[0] / 1000:g} µm)" if odd[0] > hi else ""
        raise InputError(f"{field}: {odd[0]:g} is not an optical wavelength in µm ({lo:g} … {hi:g}){hint}")
    if len(set(values)) != len(values):
        raise InputError(f"{field}: a wavelength appears twice in {values}; each laser needs its own")
    return values


def check_writable(folder: Path, create: bool = False) -> None:
    """That ``folder`` can be written (its nearest existing ancestor, when it is not there
    yet), and, with ``create``, make it: checked early, made only once the input and the
    model passed, so a refused command leaves no empty folder behind."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"--out {folder}: cannot create it ({existing} is not a folder)")
    if not os.access(existing, os.W_OK):
        raise InputError(f"--out {folder}: not writable" if existing == folder else
                         f"--out {folder}: cannot create it ({existing} is not writable)")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--out {folder}: cannot create it ({exc.strerror})") from None


def write_tiff(path: Path, data: np.ndarray, mask: np.ndarray | None = None, pitch_um: float | None = None) -> None:
    """A float32 TIFF (BigTIFF when large), written under a temporary name, then renamed.
    With ``mask``, pixels outside it are NaN (what ImageJ, Fiji and Gwyddion show as no
    data); with ``pitch_um``, the pixel size is recorded, so they measure in µm (ImageJ's
    own metadata, and resolution tags in pixels per cm for a BigTIFF, which ImageJ's
    format cannot be)."""
    import tifffile

    tmp = path.with_name(path.name + ".part")
    rows = max(1, 2**24 // max(data.shape[-1] * 4, 1))  # ~16 MB strips: bounded memory

    def strips() -> Iterator[np.ndarray]:
        for r in range(0, data.shape[0], rows):
            strip = np.array(data[r : r + rows], np.float32)
            if mask is not None:
                strip[~np.asarray(mask[r : r + rows], bool)] = np.nan
                release_pages(mask)
            release_pages(data)  # a memmap's read pages leave RSS (1 GB of height at 16384²)
            yield strip

    big = data.nbytes > 2**31
    scale: dict[str, Any] = {}
    if pitch_um and big:
        scale = {"resolution": (1e4 / pitch_um, 1e4 / pitch_um), "resolutionunit": "CENTIMETER"}
    elif pitch_um:
        scale = {"imagej": True, "resolution": (1 / pitch_um, 1 / pitch_um), "metadata": {"unit": "micron"}}
    tifffile.imwrite(tmp, strips(), shape=data.shape, dtype=np.float32, bigtiff=big,
                     photometric="minisblack", rowsperstrip=rows, **scale)
    release_pages(data)
    os.replace(tmp, path)


def write_preview(path: Path, height: np.ndarray, mask: np.ndarray, pitch_um: float, max_px: int = 1024) -> None:
    """A PNG of the height (µm, with a colour bar), at most ``max_px`` on its long side;
    invalid pixels grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, -(-max(height.shape) // max_px))
    h = np.asarray(height[::step, ::step], np.float32)
    m = np.asarray(mask[::step, ::step], bool)
    shown = np.ma.masked_where(~m, h)
    fig, ax = plt.subplots(figsize=(8, 8 * h.shape[0] / max(h.shape[1], 1) + 0.5), dpi=100)
    extent = (0, height.shape[1] * pitch_um / 1000, height.shape[0] * pitch_um / 1000, 0)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.6")
    im = ax.imshow(shown, cmap=cmap, extent=extent)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title(f"height, {int((~mask).sum()) if mask.size < 2**31 else 'many'} pixels flagged (grey)")
    fig.colorbar(im, ax=ax, label="height (µm)")
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write_vtk(path: Path, height: np.ndarray, mask: np.ndarray, pitch_um: float, max_px: int = 1024,
              flags: np.ndarray | None = None) -> None:
    """The surface as a VTK structured grid (ParaView), pixel pitch in µm, at most
    ``max_px`` points on its long side; ``flags`` (why a pixel is invalid) as point data too."""
    import meshio

    step = max(1, -(-max(height.shape) // max_px))
    h = np.asarray(height[::step, ::step], np.float64)
    m = np.asarray(mask[::step, ::step], np.float64)
    extra = {} if flags is None else {"flag": np.asarray(flags[::step, ::step], np.float64).ravel()}
    ny, nx = h.shape
    yy, xx = np.mgrid[0:ny, 0:nx] * (step * pitch_um)
    points = np.column_stack([xx.ravel(), yy.ravel(), h.ravel()])
    idx = np.arange(ny * nx).reshape(ny, nx)
    quads = np.column_stack([idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()])
    mesh = meshio.Mesh(points, [("quad", quads)], point_data={"height_um": h.ravel(), "valid": m.ravel(), **extra})
    tmp = path.with_name(path.name + ".part.vtu")
    mesh.write(tmp)
    os.replace(tmp, path)
