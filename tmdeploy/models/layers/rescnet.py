"""ResCNet response calibration (docs/models.md, "ResCNet response calibration"; arXiv 2411.13582).

Each sample predicts, from its own pooled response, a per-channel mean and log-variance; responses
far from that mean (two-tailed normal tail probability small) get a small boost, typical ones up to
×1.5. Per-sample statistics only, so it behaves the same at any batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResponseCalibration(nn.Module):
    """``Y + Φ(−|z|)·Y`` with ``z = (Y − μ(Y)) / (exp(½·logvar(Y)) + ε)``; reduction ``r`` for the bottleneck.

    Φ(−|z|) is written as ``½·(1 − erf(|z|/√2))`` because ONNX has ``Erf`` but no ``Erfc``.
    """

    def __init__(self, channels: int, reduction: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.eps = eps
        self.squeeze = nn.Linear(channels, hidden)  # W1, b1 (no nonlinearity after it)
        self.mean = nn.Linear(hidden, channels)  # W21, b21
        self.logvar = nn.Linear(hidden, channels)  # W22, b22

    def forward(self, y: Tensor) -> Tensor:
        h = self.squeeze(F.adaptive_avg_pool2d(y, 1).flatten(1))
        mu = self.mean(h)[:, :, None, None]
        std = torch.exp(0.5 * self.logvar(h))[:, :, None, None]
        z = (y - mu) / (std + self.eps)
        w = 0.5 * (1.0 - torch.erf(z.abs() / math.sqrt(2.0)))
        return y + w * y
