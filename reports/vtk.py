"""VTK export through meshio: PINN solutions on a structured grid (u, exact, error as point
data; at a reference file's points for a problem measured against one) and PSI height
maps as surface meshes (height, error, modulation).

    python -m reports.vtk RUN_ID [--out DIR] [--no-attach] [--problem FILE.py:CLASS] [--moved OLD=NEW]

A run of the lab's own PDE is rebuilt from its file only when the user names it
(``--problem``, as the run's params show it) and every file the run read is unchanged.

Works for PDE runs (``studies.pde:run``) and PSI runs (``studies.psi_pretrain:run``): the
model is rebuilt from the run's artifacts; files are attached to the run under ``vtk/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cpikan.arguments import ArgumentParser
from reports.common import get_run
from tracking.store import TrackingError


def _cells(shape: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """Line, quad or hexahedron cells of a structured grid with ij-ordered points."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    if len(shape) == 1:
        return [("line", np.stack([idx[:-1], idx[1:]], 1))]
    if len(shape) == 2:
        a = idx[:-1, :-1].ravel()
        b, c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
        return [("quad", np.stack([a, b, c, d], 1))]
    corners = [idx[i : i + shape[0] - 1, j : j + shape[1] - 1, k : k + shape[2] - 1].ravel()
               for (i, j, k) in ((0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))]
    return [("hexahedron", np.stack(corners, 1))]


def _grid_shape(points: np.ndarray) -> tuple[int, ...] | None:
    """The shape of the ij grid ``points`` are, or None when they are scattered."""
    axes = [np.unique(points[:, j]) for j in range(points.shape[1])]
    shape = tuple(len(a) for a in axes)
    if int(np.prod(shape)) != len(points):
        return None
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, points.shape[1])
    return shape if np.array_equal(grid, points) else None


def pinn_mesh(model: Any, problem: Any, resolution: int | None = None) -> Any:
    """The solution on a structured grid with its exact value and error as point data; a
    problem measured against a reference file, at the file's points (``u_reference``: on its
    grid, or as vertices when scattered); a system, each field (``u_0``, ``u_1``, …)."""
    import meshio
    import torch

    if problem.reference_file is not None:
        grid, ref = problem.reference_solution()
        shape, label = _grid_shape(grid.numpy()), "u_reference"
    else:
        res = resolution or min(problem.eval_resolution, {1: 2001, 2: 201, 3: 41}[problem.dim])
        axes = [torch.linspace(a, b, res, dtype=torch.float64) for a, b in zip(problem.lo, problem.hi)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, problem.dim)
        shape, label = (res,) * problem.dim, "u_exact"
        if problem.has_region():  # outside the domain the network means nothing: vertices inside only
            grid, shape = grid[problem.inside(grid).to(torch.bool)], None
        ref = problem.exact(grid)
    with torch.no_grad():
        out = torch.cat([model(c) for c in grid.split(65536)]).double().numpy()
    ref = ref.numpy().reshape(len(grid), -1)
    data = {}
    for k in range(ref.shape[1]):
        u = "u" if ref.shape[1] == 1 else f"u_{k}"
        data.update({u: out[:, k], label.replace("u", u, 1): ref[:, k],
                     "error" if ref.shape[1] == 1 else f"error_{k}": out[:, k] - ref[:, k]})
    pts = np.zeros((len(grid), 3))
    pts[:, : problem.dim] = grid.numpy()
    cells = _cells(shape) if shape and problem.dim <= 3 else [("vertex", np.arange(len(pts))[:, None])]
    return meshio.Mesh(pts, cells, point_data=data)


def psi_mesh(height: np.ndarray, truth: np.ndarray | None = None, modulation: np.ndarray | None = None,
             pixel_um: float = 1.0) -> Any:
    """Surface mesh z = h(x, y) (µm) with height, error and modulation as point data."""
    import meshio

    H, W = height.shape
    yy, xx = np.meshgrid(np.arange(H) * pixel_um, np.arange(W) * pixel_um, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel(), height.ravel().astype(np.float64)], 1)
    data = {"height": height.ravel().astype(np.float64)}
    if truth is not None:
        data["error"] = (height - truth).ravel().astype(np.float64)
    if modulation is not None:
        data["modulation"] = modulation.ravel().astype(np.float64)
    return meshio.Mesh(pts, _cells((H, W)), point_data=data)


def meshes_for_run(client: Any, run: Any, code: tuple[str, ...] = (),
                   moves: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    entry = run.data.tags.get("cpikan.entry_point", "")
    rid = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        cfg = json.loads(Path(client.download_artifacts(rid, "config.json", tmp)).read_text())
        if entry == "studies.pde:run":
            from cpikan.experiment import build
            from tracking import models

            model, tensors, config = models.load_model(rid, code=code, moves=moves)
            problem = build(config)[0]
            problem.load_state_dict(models.part(tensors, "problem"))
            return {"solution.vtu": pinn_mesh(model, problem)}
        if entry == "studies.psi_pretrain:run":
            from cpikan.psi.classical import phase_and_modulation
            from cpikan.psi.data import open_memmap_dataset
            from cpikan.psi.physics import dequantize
            from cpikan.psi.synth import WaferSpec
            from cpikan.tiling import predict_tiled
            from studies.psi_pretrain import PSIPretrainConfig, load_model, synthetic_dataset

            c = PSIPretrainConfig.from_dict(cfg)
            vb, vh = open_memmap_dataset(synthetic_dataset(WaferSpec(c.val_size, c.val_size, seed=c.data_seed + 1)))
            x = dequantize(np.asarray(vb))
            pred = predict_tiled(load_model(rid), x, tile_size=256, overlap=128)[0]
            _, mod = phase_and_modulation(x)
            return {"height.vtu": psi_mesh(pred, np.asarray(vh), mod.min(axis=0))}
    raise TrackingError(f"run {rid}: no VTK export for entry point {entry or '(none)'}")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m reports.vtk", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_id")
    ap.add_argument("--out", default="reports/out/vtk")
    ap.add_argument("--no-attach", action="store_true")
    ap.add_argument("--problem", action="append", default=[], metavar="FILE.py:CLASS",
                    help="the lab's own PDE the run names: you name it, so your file is imported (the store never "
                         "chooses code to import), once every file the run read is there unchanged")
    ap.add_argument("--moved", action="append", default=[], metavar="OLD=NEW",
                    help="a folder or file the run read is now at NEW (its sha256 is still checked)")
    args = ap.parse_args(argv)
    try:
        from tracking import relocate

        moves = relocate.parse_moves(args.moved)
        client, run = get_run(args.run_id)
        args.run_id = run.info.run_id  # the whole ID when given its start
        meshes = meshes_for_run(client, run, tuple(args.problem), moves)
    except (TrackingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) / args.run_id
    out.mkdir(parents=True, exist_ok=True)
    for name, mesh in meshes.items():
        mesh.write(out / name)
        if not args.no_attach:
            client.log_artifact(args.run_id, str(out / name), "vtk")
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
