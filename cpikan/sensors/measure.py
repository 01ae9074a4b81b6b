"""How much of the domain each point of a mesh stands for: the weights of a POD over it.

A solver's mesh is fine where the flow is sharp (a boundary layer, a wake) and coarse
elsewhere; with every point weighted alike, a POD describes the fine region's variance
and a relative error counts its points many times over. Weighted by each point's share
of the domain's area or volume, the modes are those of the field over the domain and the
errors are its L2 norm there, whatever the mesh. A cell's measure (length, area, volume)
is split equally among its nodes (a lumped mass matrix); cell data weigh by their own
cell's measure. Only the cells of the mesh's highest dimension count: the line cells a
mesher adds for the boundary of a 2-D mesh are markers, not domain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: faces of the 3-D cells meshio reads, in VTK node order (quadrilaterals split in two)
_FACES = {
    "hexahedron": ((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7)),
    "wedge": ((0, 1, 2), (3, 4, 5), (0, 1, 4, 3), (1, 2, 5, 4), (2, 0, 3, 5)),
    "pyramid": ((0, 1, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)),
}
#: each kind's dimension and its corner nodes (higher-order cells: the first ones, VTK order)
_KINDS = {"line": (1, 2), "triangle": (2, 3), "quad": (2, 4), "tetra": (3, 4), "hexahedron": (3, 8),
          "wedge": (3, 6), "pyramid": (3, 5)}


def _kind(name: str) -> str | None:
    """meshio's cell type without its order (``triangle6`` → ``triangle``), if measurable."""
    base = name.rstrip("0123456789")
    return base if base in _KINDS else None


def dimension(kind: str) -> int:
    base = _kind(kind)
    if base is not None:
        return _KINDS[base][0]
    return 3 if kind.startswith("polyhedron") else 2 if kind.startswith("polygon") else 0


def _triangle_areas(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1)


def _tetra_volumes(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.abs(np.einsum("ij,ij->i", b - a, np.cross(c - a, d - a))) / 6.0


def cell_measures(points: np.ndarray, kind: str, conn: np.ndarray) -> np.ndarray:
    """Length, area or volume of each cell (convex cells exactly; straight-sided)."""
    base = _kind(kind)
    if base is None or conn.dtype == object or conn.ndim != 2:
        raise ValueError(f"cells of type {kind!r}: their measure is not computed")
    p = np.zeros((len(points), 3))
    p[:, : points.shape[1]] = points
    corner = p[conn[:, : _KINDS[base][1]]]
    if base == "line":
        return np.linalg.norm(corner[:, 1] - corner[:, 0], axis=-1)
    if base == "triangle":
        return _triangle_areas(corner[:, 0], corner[:, 1], corner[:, 2])
    if base == "quad":
        return (_triangle_areas(corner[:, 0], corner[:, 1], corner[:, 2])
                + _triangle_areas(corner[:, 0], corner[:, 2], corner[:, 3]))
    if base == "tetra":
        return _tetra_volumes(*(corner[:, i] for i in range(4)))
    centre = corner.mean(1)  # convex cells: tetrahedra from the centre to each face's triangles
    volume = np.zeros(len(conn))
    for face in _FACES[base]:
        for i in range(1, len(face) - 1):
            volume += _tetra_volumes(centre, corner[:, face[0]], corner[:, face[i]], corner[:, face[i + 1]])
    return volume


def domain_cells(cells: Sequence[tuple[str, np.ndarray]]) -> list[int]:
    """Indices of the cell blocks of the mesh's highest dimension (the domain itself)."""
    dims = [dimension(kind) for kind, _ in cells]
    top = max(dims, default=0)
    return [i for i, d in enumerate(dims) if d == top and top > 0]


def point_weights(points: np.ndarray, cells: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Each point's share of the domain: its cells' measures split among their nodes,
    scaled to a mean of 1 (a uniform mesh weighs every point 1)."""
    w = np.zeros(len(points))
    for i in domain_cells(cells):
        kind, conn = cells[i]
        share = cell_measures(points, kind, conn) / conn.shape[1]
        np.add.at(w, conn.ravel(), np.repeat(share, conn.shape[1]))
    return _normalised(w)


def cell_weights(points: np.ndarray, cells: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Each cell's share of the domain (cell data, blocks in order; lower-dimensional cells 0)."""
    top = set(domain_cells(cells))
    parts = [cell_measures(points, kind, conn) if i in top else np.zeros(len(conn))
             for i, (kind, conn) in enumerate(cells)]
    return _normalised(np.concatenate(parts))


def _normalised(w: np.ndarray) -> np.ndarray:
    total = float(w.sum())
    if not np.isfinite(total) or total <= 0:
        raise ValueError("the mesh's cells have no area or volume")
    return w * (len(w) / total)


def check_weights(weights: np.ndarray, n: int, field: str = "weights") -> np.ndarray:
    """Weights a user gives (an .npz's ``weights``): n finite values ≥ 0, not all 0."""
    w = np.asarray(weights, np.float64)
    if w.shape != (n,):
        raise ValueError(f"{field}: shape {w.shape}; expected ({n},), one per point")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{field}: each point's share of the domain, finite and ≥ 0 (not all 0)")
    return _normalised(w)
