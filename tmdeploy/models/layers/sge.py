"""Spatial Group-wise Enhance (docs/models.md, "SGE"; Li et al., arXiv 1905.09646).

Each of G channel groups is re-weighted per position by how well the position matches the group's
own global descriptor, normalised over space per sample: no batch statistics, 2G parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialGroupEnhance(nn.Module):
    """SGE with ``groups`` groups (``channels % groups == 0``); γ init 0, β init 1, so it starts as ×σ(1).

    Reshapes use ``-1`` for the N·G axis so the batch stays dynamic in ONNX. A 1×1 map would divide by
    a zero standard deviation (``÷(HW−1)``), so it is rejected with ``ValueError``; the check reads
    ``x.shape`` as Python ints, which tracing turns into a constant, as intended.
    """

    def __init__(self, channels: int, groups: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"SGE: {channels} channels do not split into {groups} groups")
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))  # γ
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))  # β

    def forward(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        if h * w == 1:
            raise ValueError("SGE needs a spatial map larger than 1x1")
        xg = x.reshape(-1, c // self.groups, h, w)  # (N·G)×(C/G)×H×W
        g = xg.mean((2, 3), keepdim=True)  # per-group descriptor
        sim = (xg * g).sum(1, keepdim=True)  # (N·G)×1×H×W
        sim = sim - sim.mean((2, 3), keepdim=True)
        t = sim / (sim.std((2, 3), keepdim=True) + self.eps)  # unbiased std, ε added to it
        a = t.reshape(-1, self.groups, h, w) * self.weight + self.bias
        out = xg * torch.sigmoid(a.reshape(-1, 1, h, w))
        return out.reshape(-1, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
