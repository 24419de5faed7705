"""WRN16: a CIFAR-style wide ResNet of depth 16 (seed count 1.28M + 129C, final width 128).

Chosen config: 3×3 stem to 16 channels (Conv→BN→ReLU), then three stages of n = 2 post-activation basic
blocks (Conv→BN→ReLU→Conv→BN, add, ReLU; depth 6n + 4 = 16 as in the WRN paper) with widths 64/128/128
at 32×32 / 16×16 / 8×8, and a 1×1 conv + BN shortcut where the shape changes. The standard WRN-16-2
(32/64/128) has only 0.69M parameters and WRN-16-4 (64/128/256) 2.75M with a 256-wide classifier;
widening the first two stages to 64/128 and keeping the last at 128 gives 1.25M (−2 %) and the seed's
128C + C classifier.

``wrn16-aux`` / ``wrn16-cls`` put the patch head on the 128-wide stage-2 output (16×16), the same place
as in RN26.
"""

from __future__ import annotations

from .layers import BasicBlock, StagedNet, conv_bn_relu, make_stages
from .registry import register_model

WRN_STEM = 16
WRN_WIDTHS = (64, 128, 128)
WRN_DEPTHS = (2, 2, 2)


def _wrn16(num_classes: int, in_chans: int, patch: str | None = None) -> StagedNet:
    stages = make_stages(BasicBlock, WRN_STEM, WRN_WIDTHS, WRN_DEPTHS)
    return StagedNet(conv_bn_relu(in_chans, WRN_STEM, 3), stages, WRN_WIDTHS, num_classes, in_chans, patch=patch)


@register_model("wrn16")
def wrn16(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _wrn16(num_classes, in_chans)


@register_model("wrn16-aux")
def wrn16_aux(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _wrn16(num_classes, in_chans, patch="aux")


@register_model("wrn16-cls")
def wrn16_cls(num_classes: int = 10, in_chans: int = 3) -> StagedNet:
    return _wrn16(num_classes, in_chans, patch="cls")
