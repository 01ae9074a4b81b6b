"""U-Net for PSI height reconstruction (16 buckets → height), tiling-friendly.

No normalisation layers by default (per-tile statistics would break exact tiling), zero
padding, 2×2 max-pooling and nearest upsampling, so the downsampling factor is 2**depth
and the receptive field is a closed form, declared for :mod:`cpikan.tiling`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _block(cin: int, cout: int, convs: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), act()]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int = 1,
        width: int = 16,
        depth: int = 3,
        convs_per_block: int = 2,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if depth < 0 or width < 1 or convs_per_block < 1:
            raise ValueError(f"unet: need depth ≥ 0, width ≥ 1, convs ≥ 1; got {depth}, {width}, {convs_per_block}")
        acts = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"activation: unknown {activation!r}; allowed: {', '.join(acts)}")
        act = acts[activation]
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depth, self.convs = depth, convs_per_block
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w, convs_per_block, act))
            cin = w
        self.up = nn.ModuleList(
            _block(widths[i + 1] + widths[i], widths[i], convs_per_block, act) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.pool = nn.MaxPool2d(2)

    @property
    def downsampling_factor(self) -> int:
        return 2**self.depth

    @property
    def receptive_field_radius(self) -> int:
        """Each 3×3 conv at stride s adds s; each 2×2 pool at stride s adds s/2·… (bounded by s)."""
        r = 0
        for level in range(self.depth + 1):  # encoder (the bottleneck is the last level)
            r += self.convs * 2**level
            if level < self.depth:
                r += 2**level  # the pooling window
        for level in reversed(range(self.depth)):  # decoder: nearest upsampling adds < 1 stride
            r += 2**level + self.convs * 2**level
        return r

    def forward(self, x: Tensor) -> Tensor:
        f = 2**self.depth
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"input: height and width must be multiples of {f}, got {tuple(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = self.pool(x)
        for block in self.up:
            x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


class PlainCNN(nn.Module):
    """A second architecture for tiling tests: dilated convs, no downsampling, another radius."""

    def __init__(self, in_channels: int = 16, out_channels: int = 1, width: int = 8,
                 dilations: tuple[int, ...] = (1, 2, 4, 8, 3)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for d in dilations:
            layers += [nn.Conv2d(cin, width, 3, padding=d, dilation=d), nn.Tanh()]
            cin = width
        layers.append(nn.Conv2d(cin, out_channels, 1))
        self.net = nn.Sequential(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.receptive_field_radius = sum(dilations)
        self.downsampling_factor = 1

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
