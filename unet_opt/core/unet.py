"""The UNet: two 3x3 convolutions per level, max-pool down, transposed-conv up, skip connections.

Built bottom-up: `Block` -> `Encoder` / `Decoder` -> `UNet`. Convolutions are padded, so the
output has the input's height and width whenever both are multiples of ``2 ** depth``.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """conv3x3 -> BN -> ReLU, twice. Bias is off because BatchNorm supplies it."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Encoder(nn.Module):
    """depth + 1 blocks; every block but the last is followed by a 2x2 max-pool."""

    def __init__(self, in_channels: int, widths: list[int]):
        super().__init__()
        ins = [in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(Block(i, o) for i, o in zip(ins, widths))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            features.append(x)
        return features  # finest first, bottleneck last


class Decoder(nn.Module):
    """Upsample, concatenate the encoder feature of the same scale, then a Block."""

    def __init__(self, widths: list[int]):
        super().__init__()
        rev = widths[::-1]  # bottleneck first
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in rev[:-1])
        self.blocks = nn.ModuleList(Block(c, c // 2) for c in rev[:-1])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, features[-2::-1]):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class UNet(nn.Module):
    def __init__(self, out_channels: int, base_channels: int = 16, depth: int = 3, in_channels: int = 3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = Encoder(in_channels, widths)
        self.decoder = Decoder(widths)
        self.head = nn.Conv2d(base_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W) with H and W multiples of 2**depth -> logits (B, out_channels, H, W)
        multiple = 2**self.depth
        h, w = x.shape[-2:]
        if h % multiple or w % multiple:
            fit = lambda n: max(multiple, round(n / multiple) * multiple)  # noqa: E731
            raise ValueError(
                f"input of {h}x{w} does not fit a UNet of depth {self.depth}: height and width must be "
                f"multiples of {multiple}; resize to {fit(h)}x{fit(w)}"
            )
        return self.head(self.decoder(self.encoder(x)))
