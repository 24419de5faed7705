"""DN100: a CIFAR-style DenseNet-BC of depth 100 (seed count 1.20M + 535C, so a 534-wide classifier input).

Chosen config: 3×3 stem conv to 24 channels, three dense blocks of 16 bottleneck layers
(BN→ReLU→1×1 conv to 4k → BN→ReLU→3×3 conv to k, concatenated; depth 3·16·2 + 4 = 100) with growth
rate k = 13, transitions BN→ReLU→1×1 conv→2×2 average pool with compression θ = 0.82, and a final
BN→ReLU before the global pool. Widths: 24 → 232 | 190 → 398 | 326 → 534.
The textbook DenseNet-BC-100 (k = 12, θ = 0.5) has 0.77M parameters and a 342-wide classifier; no
(k, θ = 0.5) pair gives both 534 and ~1.2M, so k and θ were searched jointly (stem kept near 2k):
k = 13, θ = 0.82 gives exactly 534 and 1.19M (−0.6 %).
DenseNet keeps the usual pre-activation BN-ReLU-Conv order; it has BN-ReLU like the other baselines.

``dn100-aux`` / ``dn100-cls`` put the patch head at the end of the middle dense block (398 wide,
16×16, before the second transition), the same resolution as in RN26 and WRN16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import StagedNet
from .registry import register_model

DN_STEM = 24
DN_GROWTH = 13
DN_LAYERS = 16
DN_COMPRESSION = 0.82
DN_BOTTLENECK = 4  # the 1×1 conv outputs DN_BOTTLENECK · growth channels


def bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False))


class DenseLayer(nn.Module):
    """Bottleneck layer whose ``growth`` new channels are concatenated to its input."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int = DN_BOTTLENECK) -> None:
        super().__init__()
        self.layers = nn.Sequential(bn_relu_conv(in_channels, bottleneck * growth, 1),
                                    bn_relu_conv(bottleneck * growth, growth, 3))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.layers(x)], 1)


def dense_block(in_channels: int, num_layers: int, growth: int) -> nn.Sequential:
    return nn.Sequential(*(DenseLayer(in_channels + i * growth, growth) for i in range(num_layers)))


def transition(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(*bn_relu_conv(in_channels, out_channels, 1), nn.AvgPool2d(2))


def _dn100(num_classes: int, in_chans: int, patch: str | None = None) -> StagedNet:
    """Stages: [block1], [transition1, block2], [transition2, block3, BN, ReLU]; the tap is stage 2's end."""
    stages, widths, channels = [], [], DN_STEM
    for i in range(3):
        layers = []
        if i:
            reduced = int(channels * DN_COMPRESSION)
            layers.append(transition(channels, reduced))
            channels = reduced
        layers.append(dense_block(channels, DN_LAYERS, DN_GROWTH))
        channels += DN_LAYERS * DN_GROWTH
        if i == 2:
            layers += [nn.BatchNorm2d(channels), nn.ReLU()]
        stages.append(nn.Sequential(*layers))
        widths.append(channels)
    stem = nn.Conv2d(in_chans, DN_STEM, 3, padding=1, bias=False)
    return StagedNet(stem, stages, widths, num_classes, in_chans, patch=patch)


@register_model("dn100")
def dn100(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _dn100(num_classes, in_chans)


@register_model("dn100-aux")
def dn100_aux(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _dn100(num_classes, in_chans, patch="aux")


@register_model("dn100-cls")
def dn100_cls(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _dn100(num_classes, in_chans, patch="cls")
