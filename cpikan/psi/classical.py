"""Classical PSI reconstruction: four-bucket phase, a mask of untrustworthy pixels, multi-wavelength
height by joint search over fringe orders (excess fractions; docs/domain.md §3).

Per pixel, the candidate heights are the fringe orders of the first laser inside the
range; each is scored by Σ_l wrap(φ_l − 4πh/λ_l)² (maximum likelihood under Gaussian phase
noise), the best is kept, and h is refined by the weighted mean of every laser's
unwrapped estimate. A pixel whose height lies outside the range has no good candidate
inside it: its best score stays high (the nearest alias of the default wavelengths costs
≈ 0.5 rad², 1 % intensity noise ≈ 0.001 rad²), so pixels scoring above ``max_residual``
are flagged invalid in the mask instead of silently answering a wrong fringe order. The
residual alone lets noise through when the fringes barely stand above it (a 12-bit camera
at B/σ = 2.2: 17 % of the pixels it passes are a fringe order off), so the mask also asks
for visible fringes, B/σ ≥ 6 against the noise the buckets themselves show (σ at the pixel's
own intensity: shot noise grows with the light), and no clipped or non-finite bucket.
Vectorised over pixels and chunked over rows (side by side in threads), so a 9344 × 7000
image runs in bounded memory.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from cpikan.distributed import Shard
from cpikan.memory import release_pages
from cpikan.psi.physics import DEFAULT_PSI, PSIConfig, dequantize

TWO_PI = 2 * math.pi


def wrap(phi: np.ndarray) -> np.ndarray:
    return (phi + math.pi) % TWO_PI - math.pi


def phase_and_modulation(buckets: np.ndarray, cfg: PSIConfig = DEFAULT_PSI) -> tuple[np.ndarray, np.ndarray]:
    """Wrapped phase (L, H, W) and modulation B (L, H, W) from (16, H, W) buckets."""
    phi, mod, _, _ = fringes(buckets, cfg)
    return phi, mod


def fringes(buckets: np.ndarray, cfg: PSIConfig = DEFAULT_PSI) -> tuple[np.ndarray, ...]:
    """Per laser (L, H, W): wrapped phase φ, modulation B, mean intensity A, and the
    four-bucket closure ((I₁ + I₃) − (I₂ + I₄)) / 2, which the model makes zero: what is left
    is the buckets' noise (its variance is one bucket's), whatever the height."""
    I = dequantize(np.asarray(buckets)).astype(np.float64)
    I = I.reshape(len(cfg.wavelengths), len(cfg.steps), *I.shape[1:])
    s = I[:, 3] - I[:, 1]  # 2B sin φ (for δ = 0, π/2, π, 3π/2)
    c = I[:, 0] - I[:, 2]  # 2B cos φ
    closure = 0.5 * ((I[:, 0] + I[:, 2]) - (I[:, 1] + I[:, 3]))
    return np.arctan2(s, c), 0.5 * np.sqrt(s * s + c * c), I.mean(axis=1), closure


#: why a pixel is flagged (the value of ``flags_out``: the first cause found; 0 = valid)
LOW_CONTRAST, NOISY, SATURATED, NO_HEIGHT, NOT_FINITE = 1, 2, 4, 8, 16
MODEL_NOT_FINITE = 32  # set by a learned model's pass: its height there is NaN or infinite
FLAG_NAMES = {LOW_CONTRAST: "low_contrast", NOISY: "noisy", SATURATED: "saturated", NO_HEIGHT: "no_height",
              NOT_FINITE: "not_finite", MODEL_NOT_FINITE: "model_not_finite"}
MIN_SNR = 6.0  # B/σ: phase noise ≤ 0.12 rad per laser, where the joint residual still tells orders apart
CHI2_1_MEDIAN = 0.4549  # median of χ²₁: one squared closure over its variance, noise only
NOISE_BINS = 16  # intensity bins of the noise fit (each needs enough closures for its median)
NOISE_SAMPLE = 1 << 16  # closures per block the fit looks at
SAMPLE = 256  # the whole-wafer figures (steps, wavelengths, SNR, order checks) read about SAMPLE² pixels


class Noise(NamedTuple):
    """One bucket's noise variance σ²(A) = a + b·A at mean intensity A (b ≥ 0), fitted over
    A ≥ ``low``: below that it is not extrapolated (a < 0 is a camera's dark offset)."""

    a: float
    b: float
    low: float = 0.0

    def sigma(self, mean: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(self.a + self.b * np.maximum(mean, self.low), 0.0))


def noise_model(mean: np.ndarray, closure: np.ndarray, usable: np.ndarray) -> Noise:
    """A camera's noise from a block's (L, h, w) mean intensities and closures.

    A camera's noise grows with the light (shot noise, variance ∝ intensity, on top of the
    read noise: the Poisson–Gaussian model), and a laser's four-bucket closure has one
    bucket's variance at the pixel's mean intensity A. Closures of ``usable`` pixels are
    binned by A; each bin's variance is its median square over χ²₁'s (robust to the few
    odd pixels); a + b·A is fitted to them. One σ for the whole block took a bright
    region's noise for the dark majority's, and kept pixels there a fringe order off."""
    pixels = np.flatnonzero(usable) if usable.any() else np.arange(usable.size)
    pixels = pixels[:: max(1, len(pixels) * len(mean) // NOISE_SAMPLE)]  # a strided sample: sorting all is slow
    A = mean.reshape(len(mean), -1)[:, pixels].ravel()
    e2 = closure.reshape(len(closure), -1)[:, pixels].ravel() ** 2
    if A.size == 0:
        return Noise(0.0, 0.0)
    bins = min(NOISE_BINS, max(1, A.size // 256))
    groups = np.array_split(np.argsort(A, kind="stable"), bins)
    a_bin = np.array([np.median(A[g]) for g in groups])
    v_bin = np.array([np.median(e2[g]) / CHI2_1_MEDIAN for g in groups])
    if bins >= 2 and a_bin[-1] > 1.2 * a_bin[0] and v_bin.min() > 0:
        w = 1.0 / v_bin  # relative errors: each bin's median is as good as its count, whatever its value
        a, b = np.linalg.lstsq(np.column_stack([w, a_bin * w]), np.ones(bins), rcond=None)[0]
        if b > 0 and a + b * a_bin[0] > 0:
            return Noise(float(a), float(b), float(a_bin[0]))
    return Noise(float(np.median(e2) / CHI2_1_MEDIAN), 0.0)


def closure_ratio(buckets: np.ndarray, cfg: PSIConfig = DEFAULT_PSI) -> float:
    """Median over pixels of Σ closure² / Σ B² over lasers: about (σ/B)² (under 0.01 where
    the fringes stand 6× above the noise) for buckets grouped as ``cfg`` has them, laser by
    laser; of order one when they are not (one step's four lasers read as one laser's four
    steps: the closure then holds the fringes themselves)."""
    _, mod, _, closure = fringes(buckets, cfg)
    num, den = (closure**2).sum(axis=0), (mod**2).sum(axis=0)
    ok = (den > 0) & np.isfinite(den) & np.isfinite(num)  # a NaN bucket says nothing of the order
    return float(np.median(num[ok] / den[ok])) if ok.any() else 0.0


def contrast(mod: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Each pixel's fringe contrast, the smallest over lasers of B/A (0 where A ≤ 0)."""
    return np.divide(mod, mean, out=np.zeros_like(mod), where=mean > 0).min(axis=0)


def finite(raw: np.ndarray) -> np.ndarray:
    """Pixels of (C, h, w) buckets whose every bucket is a number (float files can hold NaN
    or ±Inf: a flat-field division by zero); all of them for integer buckets."""
    if raw.dtype.kind != "f":
        return np.ones(raw.shape[1:], bool)
    return np.isfinite(raw).all(axis=0)


def clipped(raw: np.ndarray, saturation: int | None = None) -> np.ndarray:
    """Pixels of (C, h, w) integer buckets with a bucket at ``saturation`` (default: the
    type's maximum); none for floats."""
    if raw.dtype.kind != "u":
        return np.zeros(raw.shape[1:], bool)
    return (raw >= (np.iinfo(raw.dtype).max if saturation is None else saturation)).any(axis=0)


def step_error(raw: np.ndarray, cfg: PSIConfig = DEFAULT_PSI, min_spread: float = 0.2,
               saturation: int | None = None) -> np.ndarray:
    """(L, 2) per laser: how the closure follows the phase, e ≈ B (p sin φ + q cos φ), in
    radians, measured on the (C, h, w) buckets ``raw`` (the command passes one strided sample
    of the wafer, :data:`SAMPLE`, to this and every other whole-wafer figure). Steps δ_k exactly kπ/2 give 0; otherwise p = (δ₂ − δ₀ − π)/2 and q =
    (δ₁ − δ₃ + π)/2 to first order: a phase shifter off π/2 puts a systematic error of about
    λ/4π · |(p, q)| into the height (1 % off: 11 nm RMS here), which noise cannot. NaN
    for a laser whose phases do not spread around the circle enough to tell (a flat wafer).
    Clipped pixels (at ``saturation``) are left out of the fit."""
    phi, mod, _, closure = fringes(raw, cfg)
    usable = ~clipped(raw, saturation) & finite(raw)
    usable &= (mod > 0.1 * np.nanmedian(np.where(usable, mod, np.nan), axis=(1, 2), keepdims=True)).all(axis=0)
    out = np.full((len(phi), 2), np.nan)
    for lam in range(len(phi)):
        X = np.column_stack([(mod[lam] * np.sin(phi[lam])).ravel(), (mod[lam] * np.cos(phi[lam])).ravel()])
        X = X[usable.ravel()]
        eig = np.linalg.eigvalsh(X.T @ X) if len(X) >= 16 else np.zeros(2)
        if eig[1] > 0 and eig[0] >= min_spread * eig[1]:
            out[lam] = np.linalg.lstsq(X, closure[lam].ravel()[usable.ravel()], rcond=None)[0]
    return out


def fringe_snr(raw: np.ndarray, cfg: PSIConfig = DEFAULT_PSI, saturation: int | None = None) -> float:
    """The wafer's median fringe-to-noise ratio, min over lasers of B/σ(A) (:func:`noise_model`
    on the buckets ``raw``, a sample of the wafer): one figure for how good the exposure was (the mask wants ≥ 6 per
    pixel; 40 leaves room, 8 does not). NaN when no pixel is usable."""
    with np.errstate(invalid="ignore", divide="ignore"):
        _, mod, mean, closure = fringes(raw, cfg)
        usable = finite(raw) & ~clipped(raw, saturation)
        snr = (mod / noise_model(mean, closure, usable).sigma(mean)).min(axis=0)
    return float(np.median(snr[usable])) if usable.any() else float("nan")


def wavelength_error(raw: np.ndarray, cfg: PSIConfig = DEFAULT_PSI, h_min: float = 0.0, h_max: float = 35.0,
                     saturation: int | None = None) -> np.ndarray:
    """(L,) per laser, how much longer than given its wavelength looks beside the others' (a
    fraction), from the buckets ``raw`` (a sample of the wafer): a laser whose true wavelength is λ(1 + ε)
    leaves a phase misfit −ε·4πh/λ that grows with the height, which the joint search keeps
    (0.5 % off: every pixel valid, 11 nm RMS of height error). Each laser's misfit is fitted
    against 4πh/λ over the sample's valid pixels; ε is its slope's deviation from the lasers'
    median (a common scale of every wavelength cannot be seen: the heights just scale). NaN
    when the sample's heights span less than the longest wavelength (too little leverage)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        phi, mod, mean, _ = fringes(raw, cfg)
        res = np.empty(phi.shape[1:])
        h = height_from_phase(phi, cfg, h_min, h_max, res)
        visible = contrast(mod, mean) >= 0.02
    usable = finite(raw) & ~clipped(raw, saturation) & (res <= MAX_RESIDUAL) & visible
    lam = np.asarray(cfg.wavelengths, np.float64)
    if usable.sum() < 64 or np.ptp(h[usable]) < lam.max():
        return np.full(len(lam), np.nan)
    hs = h[usable]
    slopes = []
    for l, wl in enumerate(lam):
        x = 4 * math.pi * hs / wl
        misfit = wrap(phi[l][usable] - x)
        slopes.append(np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), misfit, rcond=None)[0][0])
    slopes = np.asarray(slopes)
    return -(slopes - np.median(slopes))


def flag_pixels(raw: np.ndarray, mod: np.ndarray, mean: np.ndarray, closure: np.ndarray, residual: np.ndarray,
                min_modulation: float, max_residual: float, min_snr: float = MIN_SNR,
                saturation: int | None = None, phi: np.ndarray | None = None,
                shifter_error: np.ndarray | None = None) -> np.ndarray:
    """Why each pixel of a (C, h, w) block of buckets cannot be trusted (uint8, 0 = valid),
    from its :func:`fringes` and joint-search residual; the first cause that applies, in
    this order (a later one follows from an earlier, and would send the user the wrong way):
    a bucket that is not a number (NaN, ±Inf in a float file); a bucket at ``saturation``
    (default: the integer type's maximum; clipped: the phase is biased, 6–15 nm at 8 bits);
    fringe contrast B/A under ``min_modulation`` for a laser (A, B the pixel's own: the test
    does not depend on exposure or bit depth); B under ``min_snr`` × the noise σ at the
    pixel's intensity (:func:`noise_model`, fitted per block; the phase is then noise: the
    closure's part that ``shifter_error``, :func:`step_error` at the phases ``phi``,
    explains is not noise and is taken out first); a joint residual over ``max_residual``."""
    flags = np.zeros(raw.shape[1:], np.uint8)
    flags[clipped(raw, saturation)] = SATURATED
    flags[~finite(raw)] = NOT_FINITE
    flags[(flags == 0) & (contrast(mod, mean) < min_modulation)] = LOW_CONTRAST
    clean = (flags != SATURATED) & (flags != NOT_FINITE)  # clipping breaks the closure: it is not noise
    if shifter_error is not None and phi is not None:
        pq = np.nan_to_num(shifter_error)[:, :, None, None]
        closure = closure - mod * (pq[:, 0] * np.sin(phi) + pq[:, 1] * np.cos(phi))
    sigma = noise_model(mean, closure, clean).sigma(mean)
    flags[(flags == 0) & (mod < min_snr * sigma).any(axis=0)] = NOISY
    flags[(flags == 0) & ~(residual <= max_residual)] = NO_HEIGHT
    return flags


def saturation_level(buckets: np.ndarray, rows: int = 256) -> int | None:
    """The count at which the camera clipped these integer buckets: a k-bit camera's
    2ᵏ − 1 (12-bit in a 16-bit file: 4095; or left-justified, 65520) when that is the
    largest count in the whole wafer (unclipped light does not stop at exactly such a
    value), else the type's maximum; None for float buckets. One pass over the data."""
    if buckets.dtype.kind != "u":
        return None
    top = 0
    for r0 in range(0, buckets.shape[1], rows):
        top = max(top, int(np.max(buckets[:, r0 : r0 + rows])))
        release_pages(buckets)
    bits = 8 * buckets.dtype.itemsize
    cameras = {(1 << k) - 1 for k in range(8, bits)} | {((1 << k) - 1) << (bits - k) for k in range(8, bits)}
    return top if top in cameras else (1 << bits) - 1


MAX_RESIDUAL = 0.1  # rad², Σ over lasers: between noise (~1e-3) and the nearest alias (~0.5)


def alias_separation(cfg: PSIConfig = DEFAULT_PSI, alias_cost: float = 0.5, limit: float = 1000.0) -> float:
    """The smallest height difference (µm) the lasers cannot tell apart to within
    ``alias_cost`` rad² (≈ 30 µm for the default wavelengths). A search range of ±this
    around zero is the default: wider ranges admit aliases the residual may not flag."""
    lam = np.asarray(cfg.wavelengths, dtype=np.float64)
    h = np.arange(min(lam) / 4, limit, 0.001)
    cost = (wrap(4 * math.pi * h[:, None] / lam) ** 2).sum(axis=1)
    hits = np.flatnonzero(cost < alias_cost)
    return float(h[hits[0]]) if len(hits) else limit


def height_from_phase(
    phi: np.ndarray, cfg: PSIConfig = DEFAULT_PSI, h_min: float = 0.0, h_max: float = 35.0,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """Height (µm) from wrapped phases (L, …); ``residual`` (same shape as the height)
    receives each pixel's best joint-search score (rad²)."""
    lam = np.asarray(cfg.wavelengths, dtype=np.float64)[:, None]
    flat = phi.reshape(len(lam), -1)
    half0 = lam[0, 0] / 2
    base = (flat[0] / TWO_PI) % 1.0 * half0  # laser 0's height modulo λ0/2
    orders = np.arange(math.floor(h_min / half0) - 1, math.ceil(h_max / half0) + 1)
    # candidate m is h = base + m·λ0/2: each laser's misfit is d_l − m·2πλ0/λ_l, d_l the misfit
    # at base; float32 (costs to ~1e-6 rad², the threshold is 0.1): 6.7× faster than (M, P)
    # float64 candidate heights, the same heights
    d = (flat - 4 * math.pi * base[None] / lam).astype(np.float32)
    per_order = TWO_PI * 2 * half0 / lam[:, 0]
    best_cost = np.full(base.shape, np.inf, np.float32)
    best = np.zeros_like(base)
    x = np.empty_like(d)
    for m in orders:
        if h_min <= m * half0 and (m + 1) * half0 <= h_max:  # every pixel's candidate is in range
            np.subtract(d, ((m * per_order) % TWO_PI).astype(np.float32)[:, None], out=x)
            row = None
        else:  # at the range's ends the candidate is clipped to it, and scored there
            row = np.clip(base + m * half0, h_min, h_max)
            x[...] = flat - 4 * math.pi * row[None] / lam
        x -= np.float32(TWO_PI) * np.rint(x * np.float32(1 / TWO_PI))
        cost = np.einsum("lp,lp->p", x, x)
        better = cost < best_cost
        np.copyto(best_cost, cost, where=better)
        np.copyto(best, base + m * half0 if row is None else row, where=better)
    # refine: every laser's unwrapped height, weighted by 1/λ² (equal phase noise)
    n = np.rint((4 * math.pi * best[None] / lam - flat) / TWO_PI)
    h_l = (flat + TWO_PI * n) * lam / (4 * math.pi)
    w = 1.0 / lam**2
    h = (w * h_l).sum(axis=0) / w.sum()
    if residual is not None:
        residual[...] = best_cost.reshape(phi.shape[1:])
    return h.reshape(phi.shape[1:])


def reconstruct(
    buckets: np.ndarray,
    cfg: PSIConfig = DEFAULT_PSI,
    *,
    h_min: float = 0.0,
    h_max: float = 35.0,
    min_modulation: float = 0.02,
    max_residual: float = MAX_RESIDUAL,
    rows_per_chunk: int | None = None,
    out: np.ndarray | None = None,
    mask_out: np.ndarray | None = None,
    flags_out: np.ndarray | None = None,
    saturation: int | None = None,
    shifter_error: np.ndarray | None = None,
    shard: Shard | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Height (H, W) float32 and a validity mask: the pixel's fringes are visible (B/A ≥
    ``min_modulation``: only light without fringes fails it, as noise is judged on its own)
    and above the noise, unclipped, and its joint-search residual is
    ≤ ``max_residual`` (above it there is no consistent height in [h_min, h_max]: usually
    it lies outside the range). ``flags_out`` (uint8, H × W) receives why each pixel was
    flagged (:data:`FLAG_NAMES`). ``saturation``: the count at which the camera clips
    (:func:`saturation_level`; default the integer type's maximum). ``shifter_error``:
    :func:`step_error`, so that a phase shifter off π/2 is not taken for noise. ``shard``:
    compute only this process's chunks of rows (``cpikan.distributed``); the noise is
    estimated per chunk, so the result does not depend on how many processes share them.
    ``workers``: chunks computed side by side in threads (numpy's array work runs outside
    the GIL: 1.75× on 2 cores); the same result, with ``workers`` chunks in memory."""
    if buckets.ndim != 3:
        raise ValueError(f"buckets: expected (C, H, W), got shape {buckets.shape}")
    cfg.check_channels(buckets.shape[0])
    _, H, W = buckets.shape
    out = np.empty((H, W), np.float32) if out is None else out
    mask_out = np.empty((H, W), bool) if mask_out is None else mask_out
    if rows_per_chunk is None:  # ½ Mpixel, whatever the workers: two in flight peak as one 1-Mpixel chunk did
        rows_per_chunk = max(1, (1 << 19) // W)

    def chunk(r0: int) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):  # a NaN bucket: flagged, not warned about per chunk
            _chunk(r0)

    def _chunk(r0: int) -> None:
        block = np.asarray(buckets[:, r0 : r0 + rows_per_chunk])
        rows = slice(r0, r0 + block.shape[1])
        phi, mod, mean, closure = fringes(block, cfg)
        res = np.empty(phi.shape[1:])
        out[rows] = height_from_phase(phi, cfg, h_min, h_max, res)
        flags = flag_pixels(block, mod, mean, closure, res, min_modulation, max_residual, saturation=saturation,
                            phi=phi, shifter_error=shifter_error)
        mask_out[rows] = flags == 0
        if flags_out is not None:
            flags_out[rows] = flags
        for arr in (buckets, out, mask_out, flags_out):  # memmaps: keep only the chunks in flight resident
            release_pages(arr)

    starts = (shard or Shard()).take(list(range(0, H, rows_per_chunk)))
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(workers, len(starts))) as pool:
            list(pool.map(chunk, starts))  # list(): a chunk's exception is raised here
    else:
        for r0 in starts:
            chunk(r0)
    return out, mask_out
