"""VTK export through meshio: PINN solutions on a structured grid (u, exact, error as point
data) and PSI height maps as surface meshes (height, error, modulation).

    python -m reports.vtk RUN_ID [--out DIR] [--no-attach]

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


def pinn_mesh(model: Any, problem: Any, resolution: int | None = None) -> Any:
    import meshio
    import torch

    res = resolution or min(problem.eval_resolution, {1: 2001, 2: 201, 3: 41}[problem.dim])
    axes = [torch.linspace(a, b, res, dtype=torch.float64) for a, b in zip(problem.lo, problem.hi)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, problem.dim)
    with torch.no_grad():
        u = model(grid)[:, 0].double().numpy()
    exact = problem.exact(grid).numpy()
    pts = np.zeros((len(grid), 3))
    pts[:, : problem.dim] = grid.numpy()
    return meshio.Mesh(pts, _cells((res,) * problem.dim),
                       point_data={"u": u, "u_exact": exact, "error": u - exact})


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


def meshes_for_run(client: Any, run: Any) -> dict[str, Any]:
    entry = run.data.tags.get("cpikan.entry_point", "")
    rid = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        cfg = json.loads(Path(client.download_artifacts(rid, "config.json", tmp)).read_text())
        if entry == "studies.pde:run":
            from cpikan.experiment import build
            from tracking import models

            model, tensors, config = models.load_model(rid)
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
    args = ap.parse_args(argv)
    try:
        client, run = get_run(args.run_id)
        args.run_id = run.info.run_id  # the whole ID when given its start
        meshes = meshes_for_run(client, run)
    except TrackingError as exc:
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
