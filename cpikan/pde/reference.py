"""A reference solver's solution, read from a file, as what a PDE run is measured against.

Most PDEs a lab studies have no closed form (viscous Burgers, Allen–Cahn, Navier–Stokes in
a cavity): their PINN is judged against a spectral or finite-element solution computed
once and kept in a file, like the ``burgers_shock.mat`` of the PINN literature. A problem
names that file (``problem_kwargs={"reference": "burgers.npz"}``) and its relative L2 error
is then measured at the file's own points, with no interpolation to blur it.

Two layouts, in ``.npz`` or MATLAB ``.mat`` (v5–v7; nothing is unpickled):

* a grid: one 1-D array per coordinate, named as the problem's ``coords`` (``x``, ``t``),
  and the values on their ij grid, shape (len(x), len(t)) (``usol`` in burgers_shock.mat),
  with a trailing axis of the fields for a system;
* scattered points: ``points`` (N, dim) and the values (N,) or (N, outputs).

The values are the array named ``u``, or the one array left besides the coordinates; a
complex one (``uu`` in NLS.mat) gives a system's two fields, its real and imaginary parts.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SUFFIXES = (".npz", ".mat")
_MATLAB_META = ("__header__", "__version__", "__globals__")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except ValueError as exc:  # object arrays: a pickle, which is never loaded
            raise ValueError(f"reference: {path} holds Python objects ({exc}); save plain numeric arrays") from None
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except NotImplementedError:  # MATLAB v7.3 is HDF5
        raise ValueError(f"reference: {path} is a MATLAB v7.3 (HDF5) file; save it with "
                         "save(..., '-v7') or as .npz") from None
    return {k: v for k, v in data.items() if k not in _MATLAB_META}


def _values_key(arrays: dict[str, np.ndarray], used: set[str], path: Path) -> str:
    if "u" in arrays and "u" not in used:
        return "u"
    rest = sorted(set(arrays) - used)
    if len(rest) != 1:
        raise ValueError(f"reference: {path} holds {', '.join(sorted(arrays)) or 'no arrays'}; name the solution "
                         f"'u' (besides {', '.join(sorted(used))})")
    return rest[0]


def _real(values: np.ndarray, key: str, outputs: int) -> np.ndarray:
    """The values as float64; a complex field (Schrödinger's ψ) as its real and imaginary
    parts, the two fields of a system (outputs = 2), in a trailing axis. Values kept in
    single precision are said: an error below their rounding cannot be measured against them."""
    if values.dtype.kind in "fc" and np.finfo(values.dtype).eps > 1e-12:
        warnings.warn(f"reference: {key} holds {values.dtype} values; a relative error below "
                      f"~{np.finfo(values.dtype).eps:.0e} cannot be measured against it (save it in float64)", stacklevel=4)
    if not np.iscomplexobj(values):
        return np.asarray(values, dtype=np.float64)
    if outputs != 2:
        raise ValueError(f"reference: {key} is complex; a complex field is a system of two real ones, its real and "
                         f"imaginary parts: set outputs = 2 on the problem (it has {outputs})")
    return np.stack([values.real, values.imag], axis=-1).astype(np.float64)


def load_reference(path: str | Path, coords: tuple[str, ...], lo: tuple[float, ...], hi: tuple[float, ...],
                   outputs: int = 1, masked: bool = False) -> tuple[Tensor, Tensor]:
    """The reference's points (N, dim) and values ((N,), or (N, outputs) for a system), in
    float64; a ValueError names ``reference`` and what is wrong with the file. ``masked``: a
    problem on a region, whose grid reference is NaN outside it (the caller checks where)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"reference: {path.name} is not a reference file; allowed: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"reference: {path} does not exist")
    arrays = _arrays(path)
    dim = len(lo)
    field_shape = () if outputs == 1 else (outputs,)
    if coords and len(coords) == dim and all(c in arrays for c in coords):
        axes = [np.asarray(arrays[c], dtype=np.float64).ravel() for c in coords]
        key = _values_key(arrays, set(coords), path)
        values = _real(arrays[key], key, outputs)
        grid = tuple(len(a) for a in axes)
        if values.shape != grid + field_shape:
            if values.squeeze().shape == grid + field_shape:
                values = values.squeeze()
            else:
                named = ", ".join(f"{c} ({n})" for c, n in zip(coords, grid))
                raise ValueError(f"reference: {key} has shape {values.shape}; on the axes {named} it must be "
                                 f"{grid + field_shape} (ij order, as np.meshgrid(..., indexing='ij') makes it)")
        mesh = np.meshgrid(*axes, indexing="ij")
        points = np.stack([m.ravel() for m in mesh], axis=1)
        values = values.reshape((-1, *field_shape))
    elif "points" in arrays:
        points = np.asarray(arrays["points"], dtype=np.float64)
        if dim == 1 and points.ndim == 1:
            points = points[:, None]
        key = _values_key(arrays, {"points"}, path)
        values = _real(arrays[key], key, outputs)
        if points.ndim != 2 or points.shape[1] != dim or values.shape != (len(points), *field_shape):
            raise ValueError(f"reference: expected points (N, {dim}) and {key} {('N', *field_shape)}, got "
                             f"{points.shape} and {values.shape}")
    else:
        want = (f"the axes {', '.join(coords)} (arrays named as the problem's coords) and the values on their grid"
                if coords else "points (N, dim)")
        hint = "" if coords else " (or set coords on the problem to read a grid)"
        raise ValueError(f"reference: {path} holds {', '.join(sorted(arrays)) or 'no arrays'}; expected {want}, "
                         f"or points and values{hint}")
    if not len(points):
        raise ValueError(f"reference: {path} holds no points")
    bad = ~np.isfinite(points).all(axis=1)
    if not masked:
        bad |= ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"reference: {path} is not finite at point {i} ({points[i].tolist()}); "
                         f"{int(bad.sum())} such point(s)")
    for j in range(dim):
        span = hi[j] - lo[j]
        low, high = points[:, j].min(), points[:, j].max()
        if low < lo[j] - 1e-9 * span or high > hi[j] + 1e-9 * span:
            name = coords[j] if j < len(coords) else f"coordinate {j}"
            raise ValueError(f"reference: {name} spans [{low:g}, {high:g}], outside the problem's "
                             f"[{lo[j]:g}, {hi[j]:g}]; is it the same problem?")
    if not math.isfinite(norm := float(np.linalg.norm(np.nan_to_num(values, nan=0.0)))) or norm == 0:
        raise ValueError(f"reference: {path}'s solution is zero everywhere; a relative error needs one that is not")
    return torch.from_numpy(points), torch.from_numpy(values)
