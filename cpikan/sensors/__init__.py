"""Sparse sensors: where to measure a field, and what a few readings say about all of it.

- :mod:`cpikan.sensors.flows`: exact incompressible flows (Kovasznay, Taylor–Green) on grids,
  and snapshot families of them;
- :mod:`cpikan.sensors.pod`: the POD basis of a snapshot family (randomised for big grids);
- :mod:`cpikan.sensors.placement`: K sensors by QR column pivoting on the basis (Q-DEIM),
  extended past the basis rank by GappyPOD+E, with random and uniform-grid baselines;
- :mod:`cpikan.sensors.data`: a snapshot family from the user's own files (npy, npz, meshes);
- :mod:`cpikan.sensors.holdout`: how well a placement reads a family, on snapshots withheld from its basis;
- :mod:`cpikan.sensors.guard`: the physics red lines any trained flow model must keep.

No MLflow or Optuna here (docs/architecture.md).
"""

from cpikan.sensors.placement import Placement, SensorError, place, reconstruct
from cpikan.sensors.pod import Basis, pod_basis

__all__ = ["Basis", "Placement", "SensorError", "place", "pod_basis", "reconstruct"]
