"""Post-activation residual blocks with a pluggable branch enhancer (SGE, ResCNet calibration, or none)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .conv import conv_bn, conv_bn_relu

Enhancer = Callable[[int], nn.Module]  # channels -> module applied to a residual branch before the add


class _Residual(nn.Module):
    """``relu(enhance(branch(x)) + shortcut(x))``; subclasses build the branch (ending in a BN)."""

    def __init__(self, branch: nn.Module, in_channels: int, out_channels: int, stride: int,
                 enhancer: Enhancer | None) -> None:
        super().__init__()
        self.branch = branch
        self.enhance = enhancer(out_channels) if enhancer else nn.Identity()
        if in_channels == out_channels and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = conv_bn(in_channels, out_channels, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.enhance(self.branch(x)) + self.shortcut(x))


class BasicBlock(_Residual):
    """Two 3×3 Conv→BN (ReLU between), as in the (wide) ResNet basic block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 enhancer: Enhancer | None = None) -> None:
        branch = nn.Sequential(conv_bn_relu(in_channels, out_channels, 3, stride),
                               conv_bn(out_channels, out_channels, 3))
        super().__init__(branch, in_channels, out_channels, stride, enhancer)


class Bottleneck(_Residual):
    """1×1 reduce to ``width`` → 3×3 (carries the stride) → 1×1 expand, each Conv→BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, width: int | None = None,
                 enhancer: Enhancer | None = None) -> None:
        width = width or out_channels // 2
        branch = nn.Sequential(conv_bn_relu(in_channels, width, 1),
                               conv_bn_relu(width, width, 3, stride),
                               conv_bn(width, out_channels, 1))
        super().__init__(branch, in_channels, out_channels, stride, enhancer)
