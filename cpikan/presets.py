"""Tuned default configs of the PDE benchmarks (bench/pde_accuracy.py, the PDE studies).

The small networks here finish with Levenberg–Marquardt (``lm_steps``): measured against
L-BFGS on the same problems it reaches 10–100× lower errors in less time (helmholtz2d
5e-4 → 8e-5, poisson3d 5e-4 → 3e-5, diffusion 3e-3 → 7e-5). A short Adam phase first
helps where LM alone stalls in a poor basin (helmholtz2d stopped at 6e-4 without it).
"""

from __future__ import annotations

from cpikan.experiment import ModelConfig, PINNConfig
from cpikan.train import TrainConfig

F64 = "float64"
PRESETS: dict[str, PINNConfig] = {
    "helmholtz1d": PINNConfig(
        "helmholtz1d", {"n_interior": 400},
        ModelConfig(hidden=(16, 16), degree=8, dtype=F64),
        TrainConfig(adam_steps=0, lm_steps=250, loss_weights={"pde": 1.0, "bc": 10.0, "bc_flux": 1.0}),
    ),
    "helmholtz2d": PINNConfig(
        "helmholtz2d", {"n_interior": 2500, "n_boundary": 400},
        ModelConfig(hidden=(16, 16), degree=10, dtype=F64, hard_bc=True),
        TrainConfig(adam_steps=1000, lr=1e-2, scheduler="exponential", lm_steps=150,
                    loss_weights={"pde": 1.0, "bc": 10.0}),
    ),
    # the published setup: [2, 8, 8, 1], degree 5, 2000/400/2×200 points, weights 0.01/1/1;
    # Levenberg–Marquardt instead of L-BFGS, which stalled at ~3e-3 (bench/pde_accuracy.py)
    "diffusion": PINNConfig(
        "diffusion", {"n_interior": 2000, "n_boundary": 400, "n_initial": 400},
        ModelConfig(hidden=(8, 8), degree=5, dtype=F64),
        TrainConfig(adam_steps=1000, lr=1e-2, scheduler="exponential", lr_final_factor=0.01,
                    lm_steps=2000, loss_weights={"pde": 0.01, "ic": 1.0, "bc": 1.0}),
    ),
    "poisson3d": PINNConfig(
        "poisson3d", {"n_interior": 3000, "n_boundary": 1200},
        ModelConfig(hidden=(12, 12), degree=5, dtype=F64),
        TrainConfig(adam_steps=1000, lr=1e-2, scheduler="exponential", lm_steps=300,
                    loss_weights={"pde": 1.0, "bc": 10.0}),
    ),
    "reaction_diffusion": PINNConfig(
        "reaction_diffusion", {"n_interior": 2000, "n_boundary": 400, "n_initial": 400},
        ModelConfig(hidden=(8, 8), degree=5, dtype=F64),
        TrainConfig(adam_steps=1000, lr=1e-2, scheduler="exponential", lr_final_factor=0.1,
                    lm_steps=1000, loss_weights={"pde": 0.1, "ic": 1.0, "bc": 1.0}),
    ),
    "reaction_diffusion_inverse": PINNConfig(
        "reaction_diffusion_inverse", {"n_interior": 2000, "n_boundary": 400, "n_initial": 400},
        ModelConfig(hidden=(16, 16), degree=6, dtype=F64),
        TrainConfig(adam_steps=2000, lr=1e-2, scheduler="exponential", lr_final_factor=0.1,
                    lbfgs_steps=6000, loss_weights={"pde": 0.1, "ic": 1.0, "bc": 1.0, "data": 1.0}),
    ),
    # the `pinn` study: any PDE, the lab's own too (--set problem=FILE.py:CLASS); a general recipe
    "pinn": PINNConfig(
        "helmholtz1d", {},
        ModelConfig(hidden=(16, 16), degree=8, dtype=F64),
        TrainConfig(adam_steps=1000, lr=1e-2, scheduler="exponential", lm_steps=300),
    ),
}
