"""Classifier heads over the list of stage outputs, including ConvMix (docs/models.md, "ConvMix head"; a reconstruction).

A head takes the list of every stage's output map and returns logits, so the backbone does not need
to know whether it uses the last stage only (:class:`ClassifierHead`) or all of them (:class:`ConvMixHead`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .template_matching import PixelRMSNorm


def _pool(feature: Tensor) -> Tensor:
    """Global average pool to N×C (any H, W)."""
    return F.adaptive_avg_pool2d(feature, 1).flatten(1)


class ClassifierHead(nn.Module):
    """Plain head: global average pool of the last stage, then a linear classifier.

    ``pixel_norm`` RMS-normalises each pixel first, for networks whose last stage is an un-normalised
    residual stream (``rn26-tm``): without it the logits' scale follows the stream's, and training starts
    with a loss far above ln(classes).
    """

    def __init__(self, in_features: int, num_classes: int, pixel_norm: bool = False) -> None:
        super().__init__()
        self.norm = PixelRMSNorm() if pixel_norm else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.fc(_pool(self.norm(features[-1])))


def linear_head(widths: Sequence[int], num_classes: int, pixel_norm: bool = False) -> nn.Module:
    """:class:`ClassifierHead` over the last stage, in the ``(stage widths, num_classes)`` form backbones call."""
    return ClassifierHead(widths[-1], num_classes, pixel_norm=pixel_norm)


class ConvMixHead(nn.Module):
    """``logits = fc(Σ_s α_s·Linear_s(GAP(F_s)))`` with ``α = softmax(a)`` over the stages.

    ``a`` starts at 0 (equal weights), so no stage is favoured before training; the common width
    defaults to the last stage's, which keeps the final classifier the same size as the plain head's.
    At export ``softmax(a)`` is a constant.
    """

    def __init__(self, in_features: list[int] | tuple[int, ...], num_classes: int,
                 width: int | None = None) -> None:
        super().__init__()
        width = width or in_features[-1]
        self.projections = nn.ModuleList(nn.Linear(c, width) for c in in_features)
        self.stage_logits = nn.Parameter(torch.zeros(len(in_features)))  # a
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) != len(self.projections):
            raise ValueError(f"ConvMix expects {len(self.projections)} stage outputs, got {len(features)}")
        alpha = torch.softmax(self.stage_logits, 0)
        mixed = sum(alpha[i] * proj(_pool(f)) for i, (proj, f) in enumerate(zip(self.projections, features)))
        return self.fc(mixed)
