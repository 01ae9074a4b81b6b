"""Reading PSI data: memmap datasets (synthetic or converted) and stacks of image files,
and a random-patch dataset for training through a ``DataLoader``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cpikan.psi.physics import DEFAULT_PSI, PSIConfig, add_noise, dequantize

IMAGE_SUFFIXES = (".bmp", ".png", ".tif", ".tiff")


def open_memmap_dataset(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(buckets (C, H, W), height (H, W) or None) as read-only memmaps."""
    root = Path(path)
    if not (root / "buckets.npy").exists():
        raise FileNotFoundError(f"dataset: {root / 'buckets.npy'} not found")
    buckets = np.load(root / "buckets.npy", mmap_mode="r")
    height = np.load(root / "height.npy", mmap_mode="r") if (root / "height.npy").exists() else None
    return buckets, height


def read_image_stack(paths: Sequence[str | Path], cfg: PSIConfig = DEFAULT_PSI) -> np.ndarray:
    """Bucket images (BMP/PNG/TIFF, 8- or 16-bit grey), laser-major order → (C, H, W)."""
    from PIL import Image

    cfg.check_channels(len(paths))
    frames = []
    for p in paths:
        if Path(p).suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"bucket file: {p} is not one of {', '.join(IMAGE_SUFFIXES)}")
        with Image.open(p) as im:
            frames.append(np.asarray(im))
    shapes = {f.shape for f in frames}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"bucket files: need single-channel images of one size, got shapes {sorted(shapes)}")
    return np.stack(frames)


def normalize_buckets(x: Tensor, cfg: PSIConfig = DEFAULT_PSI) -> Tensor:
    """Dataset-wide fixed scaling (never per-tile statistics): intensity → (I − A)/B."""
    return (x - cfg.A) / cfg.B


@dataclass
class PatchBatch:
    x: Tensor  # (N, C, p, p) intensities
    h: Tensor  # (N, 1, p, p) heights (µm); NaN-free

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> PatchBatch:
        return PatchBatch(self.x.to(device, torch.float32), self.h.to(device, torch.float32))

    def split(self, parts: int) -> list[PatchBatch]:
        return [PatchBatch(a, b) for a, b in zip(self.x.chunk(parts), self.h.chunk(parts))]

    def state(self) -> dict[str, Tensor]:
        return {"x": self.x, "h": self.h}


class PatchDataset(Dataset):
    """Random square patches of a memmap dataset, with noise drawn per item (seeded)."""

    def __init__(self, buckets: np.ndarray, height: np.ndarray, patch: int = 128, length: int = 10_000,
                 noise_levels: Sequence[float] = (0.0,), seed: int = 0, cfg: PSIConfig = DEFAULT_PSI) -> None:
        cfg.check_channels(buckets.shape[0])
        if patch > min(buckets.shape[1:]):
            raise ValueError(f"patch: {patch} exceeds the image size {buckets.shape[1:]}")
        self.buckets, self.height, self.patch, self.length = buckets, height, patch, length
        self.noise_levels, self.seed, self.cfg = tuple(noise_levels), seed, cfg

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng((self.seed, i))
        _, H, W = self.buckets.shape
        y, x = rng.integers(0, H - self.patch + 1), rng.integers(0, W - self.patch + 1)
        sl = (slice(y, y + self.patch), slice(x, x + self.patch))
        inten = dequantize(np.asarray(self.buckets[:, sl[0], sl[1]]))
        level = self.noise_levels[rng.integers(len(self.noise_levels))]
        if level:
            inten = add_noise(inten, level, "gaussian", rng, self.cfg)
        h = np.asarray(self.height[sl], dtype=np.float32)[None]
        return torch.from_numpy(np.ascontiguousarray(inten)), torch.from_numpy(h.copy())


def collate(items: list[tuple[Tensor, Tensor]]) -> PatchBatch:
    return PatchBatch(torch.stack([a for a, _ in items]), torch.stack([b for _, b in items]))
