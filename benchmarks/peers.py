"""Peer generators for ``python -m benchmarks.run --peer benchmarks.peers:oasis_generator``.

Written here from the published descriptions, with random weights: only their cost matters to the benchmark.
Each follows the graph contract of dp-sims (``forward(label int32 [N, H, W], noise float32 [N, ...])`` and a
``noise_shape`` attribute), so the same exporters and backends run it.

OASIS (Schönfeld et al., ICLR 2021) at 256x256: a stack of six SPADE residual blocks from 8x8 up to 256x256 with
channels 1024, 1024, 1024, 512, 256, 128, 64 (base 64), SPADE hidden width 128, and "3D noise": a 64-d vector per
image broadcast over the image and concatenated to the one-hot label map that every SPADE layer reads. At other
image sizes the same six blocks start from 1/32 of the size (8x8 at 256, 2x2 at 64).

Its discriminator (:class:`OasisDiscriminator`, for ``python -m benchmarks.train_step``) is a U-Net segmenter
trained from scratch: six residual down blocks (128, 128, 256, 256, 512, 512 channels, each halving the
resolution down to 1/64 of the image), six residual up blocks (256, 256, 128, 128, 64, 64, each doubling it and
reading the down block of the same resolution through a concatenated skip), and a 1x1 convolution to N+1
per-pixel logits. Spectral normalisation on the residual blocks' convolutions, in both networks when training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class _Spade(nn.Module):
    def __init__(self, channels: int, cond: int, hidden: int = 128):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
        h = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond: int):
        super().__init__()
        mid = min(cin, cout)
        self.norm0, self.conv0 = _Spade(cin, cond), nn.Conv2d(cin, mid, 3, padding=1)
        self.norm1, self.conv1 = _Spade(mid, cond), nn.Conv2d(mid, cout, 3, padding=1)
        self.skip = None if cin == cout else nn.ModuleList([_Spade(cin, cond), nn.Conv2d(cin, cout, 1, bias=False)])

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = x if self.skip is None else self.skip[1](self.skip[0](x, cond))
        h = self.conv0(F.leaky_relu(self.norm0(x, cond), 0.2))
        h = self.conv1(F.leaky_relu(self.norm1(h, cond), 0.2))
        return s + h


class OasisLikeGenerator(nn.Module):
    """``spectral=True``: spectral normalisation on the residual blocks' convolutions, as OASIS trains it (a power
    iteration per convolution and training step; inference benchmarks leave it off)."""

    def __init__(self, num_classes: int, size: tuple[int, int] = (256, 256), base: int = 64, z_dim: int = 64,
                 spectral: bool = False):
        super().__init__()
        self.num_classes, self.z_dim = num_classes, z_dim
        mults = [16, 16, 16, 8, 4, 2, 1]
        chans = [base * m for m in mults]
        self.stride = 2 ** (len(chans) - 2)
        cond = num_classes + z_dim
        self.first = nn.Conv2d(cond, chans[0], 3, padding=1)
        self.blocks = nn.ModuleList(_ResBlock(chans[i], chans[i + 1], cond) for i in range(len(chans) - 1))
        self.to_rgb = nn.Conv2d(chans[-1], 3, 3, padding=1)
        if spectral:
            for block in self.blocks:
                block.conv0, block.conv1 = spectral_norm(block.conv0), spectral_norm(block.conv1)
                if block.skip is not None:
                    block.skip[1] = spectral_norm(block.skip[1])

    @property
    def noise_shape(self) -> tuple[int]:
        return (self.z_dim,)

    def forward(self, label: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(self.num_classes, device=label.device, dtype=label.dtype).view(1, -1, 1, 1)
        onehot = (label.unsqueeze(1) == classes).to(noise.dtype)
        z = noise.view(noise.shape[0], self.z_dim, 1, 1).expand(-1, -1, label.shape[1], label.shape[2])
        cond = torch.cat([onehot, z], dim=1)
        x = self.first(F.interpolate(cond, scale_factor=1 / self.stride, mode="nearest"))
        for i, block in enumerate(self.blocks):
            x = block(x, cond)
            if i < len(self.blocks) - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


def oasis_generator(num_classes: int, size: tuple[int, int] = (256, 256)) -> OasisLikeGenerator:
    torch.manual_seed(0)
    return OasisLikeGenerator(num_classes, tuple(size)).eval()


class _DownBlock(nn.Module):
    """Residual block that halves the resolution: (LeakyReLU) conv3x3, LeakyReLU, conv3x3, 2x2 average pooling;
    the shortcut is a 1x1 convolution (where the width changes) and the same pooling."""

    def __init__(self, cin: int, cout: int, first: bool):
        super().__init__()
        self.first = first
        self.conv0 = spectral_norm(nn.Conv2d(cin, cout, 3, padding=1))
        self.conv1 = spectral_norm(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1)) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv0(x if self.first else F.leaky_relu(x, 0.2))
        h = F.avg_pool2d(self.conv1(F.leaky_relu(h, 0.2)), 2)
        s = F.avg_pool2d(x if self.skip is None else self.skip(x), 2)
        return h + s


class _UpBlock(nn.Module):
    """Residual block that doubles the resolution (nearest) first: LeakyReLU conv3x3, LeakyReLU conv3x3; the
    shortcut a 1x1 convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = spectral_norm(nn.Conv2d(cin, cout, 3, padding=1))
        self.conv1 = spectral_norm(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv1(F.leaky_relu(self.conv0(F.leaky_relu(x, 0.2)), 0.2))
        return h + self.skip(x)


class OasisDiscriminator(nn.Module):
    """OASIS's U-Net discriminator: image [N, 3, H, W] in [-1, 1] -> logits [N, N+1, H, W] (channel 0 "fake").

    H and W must be multiples of 64 (six halvings)."""

    levels = 6

    def __init__(self, num_classes: int, down: tuple[int, ...] = (128, 128, 256, 256, 512, 512),
                 up: tuple[int, ...] = (256, 256, 128, 128, 64, 64)):
        super().__init__()
        assert len(down) == len(up) == self.levels
        self.down = nn.ModuleList(_DownBlock(cin, cout, i == 0) for i, (cin, cout) in enumerate(zip((3, *down), down)))
        # up block i reads the previous up block's output and, from the second on, the skip of its resolution
        ins = [down[-1]] + [up[i - 1] + down[-1 - i] for i in range(1, self.levels)]
        self.up = nn.ModuleList(_UpBlock(cin, cout) for cin, cout in zip(ins, up))
        self.head = nn.Conv2d(up[-1], num_classes + 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips, h = [], image
        for block in self.down:
            h = block(h)
            skips.append(h)
        for i, block in enumerate(self.up):
            h = block(h if i == 0 else torch.cat([h, skips[-1 - i]], dim=1))
        return self.head(h)


def oasis_discriminator(num_classes: int) -> OasisDiscriminator:
    torch.manual_seed(0)
    return OasisDiscriminator(num_classes)
