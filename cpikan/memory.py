"""Peak resident memory of this process, as Linux reports it (VmHWM).

``getrusage``'s maxrss is carried across fork/exec (a child reports its parent's peak at
spawn time); VmHWM belongs to the current address space and can be reset, so it measures
one interpreter, or one stretch of work, on its own.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from pathlib import Path
from typing import Any

import numpy as np


def new_memmap(path: str | Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` memmap (``np.lib.format.open_memmap``, mode w+) whose disk blocks are
    reserved before anything is written: a sparse file's page written on a full disk kills
    the process with SIGBUS, no message and half an output left behind, where this raises
    OSError (ENOSPC) naming the folder and the size at the start."""
    import errno
    import os

    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(path)
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return arr  # a file system that cannot reserve (EOPNOTSUPP): as before
        del arr
        Path(path).unlink(missing_ok=True)
        raise OSError(exc.errno, f"no space left on {Path(path).parent} for {Path(path).name} "
                      f"({size / 1e9:.2f} GB)") from None
    return arr


def peak_rss_mb() -> float:
    """Peak RSS (MiB) since start or since the last :func:`reset_peak_rss`; NaN off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss(*memmaps: Any) -> None:
    """Start a peak measurement that does not depend on what ran before in this process.

    Freed heap memory goes back to the kernel, now and during the measurement
    (:func:`return_freed_memory`): after a training loop's :func:`keep_freed_memory` the work
    would otherwise reuse pages already resident and measure next to nothing (the demo's
    first tiling trial read 0 MB). ``memmaps`` give their resident pages back too, so reading
    them counts. Then the peak is set to the current RSS (5 → /proc/self/clear_refs).
    """
    if return_freed_memory():
        _glibc().malloc_trim(0)
    for arr in memmaps:
        release_pages(arr)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


@functools.cache
def _glibc() -> Any:
    """The C library's functions, or None where mallopt is missing (not glibc)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim  # noqa: B018 (glibc has both or neither)
    except (OSError, AttributeError):
        return None
    return libc


def _set_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    libc = _glibc()
    return (libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes) == 1)


def keep_freed_memory() -> bool:
    """Let glibc reuse freed blocks up to 32 MiB instead of returning them to the kernel.

    A training step allocates and frees the same few-MiB tensors (the derivative jets) every
    step. By default glibc hands such blocks back to the kernel (munmap, heap trimming) and
    takes them again on the next step, so every step pays page faults on fresh memory: a
    helmholtz2d step at 2900 points spent ~40 % of its time there (67 → 37 ms on 2 threads).
    Raising the mmap and trim thresholds keeps that memory in the process (RSS stays at its
    peak). Process-wide, until :func:`return_freed_memory` (the last call wins). Returns
    False where it does not apply (not glibc).
    """
    # 32 MiB is glibc's ceiling for the mmap threshold; the trim threshold only has to exceed it
    return _set_thresholds(32 * 1024 * 1024, 1 << 30)


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc give every freed block over ``threshold`` bytes back to the kernel at once.

    By default glibc raises its mmap threshold each time a large block is freed (up to
    32 MiB), so later arrays of a few MiB land on the heap and stay resident after they are
    freed: a reconstruction's stages (model probe, classical chunks, tiles) then *add up*
    in RSS instead of taking turns. A fixed threshold turns that off; for out-of-core work,
    where peak RSS is the budget, that is the right trade (the opposite of
    :func:`keep_freed_memory`, meant for training loops; the last call wins). False where it
    does not apply.
    """
    return _set_thresholds(threshold, threshold)


def release_pages(arr: Any) -> None:
    """Drop a memmap's resident pages (flushing writes first) so RSS stays bounded by the
    tiles in flight; the kernel re-reads anything needed again. No-op for other arrays."""
    base = arr
    while base is not None and not isinstance(getattr(base, "_mmap", None), mmap.mmap):
        base = getattr(base, "base", None)
    if base is None:
        return
    if getattr(base, "mode", "r") != "r":
        base.flush()
    try:
        base._mmap.madvise(mmap.MADV_DONTNEED)
    except (AttributeError, OSError, ValueError):
        pass


def strided_sample(buckets: np.ndarray, sample: int = 256) -> np.ndarray:
    """About ``sample`` × ``sample`` evenly spread pixels of (C, H, W) buckets, read row by
    row with the memmap's pages released (one strided read faulted the whole 2 GB of a
    9344 × 7000 wafer into RSS through readahead)."""
    C, H, W = buckets.shape
    ys = range(0, H, max(1, H // sample))
    sx = max(1, W // sample)
    out = np.empty((C, len(ys), len(range(0, W, sx))), buckets.dtype)
    for i, y in enumerate(ys):
        out[:, i] = buckets[:, y, ::sx]
        if i % 16 == 15:
            release_pages(buckets)
    release_pages(buckets)
    return out
