"""Shared machinery for PINN models: the affine map to [-1, 1]^d and the jet API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cpikan import diff

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Initialise under ``seed`` without touching the global RNG; no-op when ``seed`` is None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_bounds(lo: Sequence[float], hi: Sequence[float]) -> tuple[list[float], list[float]]:
    lo, hi = [float(v) for v in lo], [float(v) for v in hi]
    if len(lo) != len(hi) or not lo:
        raise ValueError(f"domain: lo and hi need the same non-zero length, got {lo} and {hi}")
    for j, (a, b) in enumerate(zip(lo, hi)):
        if not a < b:
            raise ValueError(f"domain: min must be < max in dimension {j}, got [{a}, {b}]")
    return lo, hi


class ScaledModel(nn.Module):
    """A PINN body behind ``x̂ = 2(x − lo)/(hi − lo) − 1``.

    Subclasses provide ``layers`` (an ``nn.ModuleList`` whose members map jets to jets via
    ``forward_jet``). ``lo``/``hi`` are buffers, so they travel with ``state_dict``.
    Derivatives returned by :meth:`derivatives` are with respect to the *physical*
    coordinates: the chain-rule factor 2/(hi − lo) is carried in the jet's seed.
    """

    layers: nn.ModuleList

    def __init__(self, lo: Sequence[float], hi: Sequence[float], dtype: torch.dtype) -> None:
        super().__init__()
        lo, hi = check_bounds(lo, hi)
        self.register_buffer("lo", torch.tensor(lo, dtype=dtype))
        self.register_buffer("hi", torch.tensor(hi, dtype=dtype))
        self.checkpointing = False
        #: coordinates whose two faces carry u = 0, imposed exactly by u = Π(1 − x̂_j²)·N(x̂)
        self.zero_faces: tuple[int, ...] = ()
        #: single faces ((j, ±1), …) with u = 0, imposed by a factor (1 ∓ x̂_j) (subdomains)
        self.zero_ends: tuple[tuple[int, int], ...] = ()

    @property
    def in_features(self) -> int:
        return self.lo.numel()

    def _input_stage(
        self, layers: Sequence[int], fourier_features: int, fourier_sigma: float, dtype: torch.dtype,
        seed: int | None,
    ) -> tuple[list[nn.Module], list[int]]:
        """Validated widths, and the optional Fourier-feature layer in front (which widens
        the first layer's input to 2·fourier_features)."""
        from cpikan.nn.fourier import FourierFeatures

        widths = [int(w) for w in layers]
        if len(widths) < 2 or min(widths) < 1 or widths[0] != self.in_features:
            raise ValueError(f"layers: need ≥ 2 positive widths starting with the domain's "
                             f"{self.in_features} dimensions, got {list(layers)}")
        mods: list[nn.Module] = []
        if fourier_features:
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            mods.append(FourierFeatures(widths[0], fourier_features, fourier_sigma, dtype, gen))
            widths[0] = 2 * fourier_features
        return mods, widths

    def scale(self, x: Tensor) -> Tensor:
        return 2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0

    def _check(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"x: expected shape (N, {self.in_features}) for this model, got {tuple(x.shape)}"
            )
        return x.to(self.lo.dtype)

    def _run(self, jet: Tensor) -> Tensor:
        inputs = jet
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                jet = checkpoint(layer.forward_jet, jet, use_reentrant=False)
            else:
                jet = layer.forward_jet(jet)
        if self.zero_faces:
            jet = diff.mul(jet, diff.bubble(inputs, self.zero_faces))
        if self.zero_ends:
            jet = diff.mul(jet, diff.ramp(inputs, self.zero_ends))
        return jet

    def forward(self, x: Tensor) -> Tensor:
        x = self._check(x)
        return self._run(diff.value_only(self.scale(x)))[0]

    def derivatives(self, x: Tensor) -> diff.Derivatives:
        """u, ∂u/∂x_j and ∂²u/∂x_j² in one forward pass (the fast path)."""
        x = self._check(x)
        jet = diff.seed(self.scale(x), 2.0 / (self.hi - self.lo))
        return diff.unpack(self._run(jet))
