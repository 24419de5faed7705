"""Training loss of the seed-001 "Ours" models (docs/models.md, "Class-semantic block and the auxiliary loss")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tmdeploy.errors import UsageError


def auxiliary_loss(logits: Tensor, patch_logits: Tensor | None, target: Tensor, weight: float,
                   label_smoothing: float = 0.0) -> Tensor:
    """``(1−λ)·CE(logits, y) + λ·mean_{i,j} CE(patch_logits[:, :, i, j], y)``, averaged over the batch.

    Every patch of an image is asked to predict the image's label, which is what makes the per-patch
    templates class-semantic. ``patch_logits`` is N×C×h×w; ``None`` (a model without a patch head) gives
    the plain cross-entropy, whatever λ is. ``label_smoothing`` ε makes every CE term aim at 1−ε on the
    label and ε/C spread over all C classes (torch's ``label_smoothing``).
    """
    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"auxiliary loss weight must be in [0, 1], got {weight}")
    ce = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if patch_logits is None:
        return ce
    n, _, h, w = patch_logits.shape
    # Cross-entropy over N×C×h×w with an N×h×w target averages over batch and patches at once; every
    # image has the same h·w patches, so this equals the batch mean of the per-image patch means.
    patch_ce = F.cross_entropy(patch_logits, target[:, None, None].expand(n, h, w), label_smoothing=label_smoothing)
    return (1.0 - weight) * ce + weight * patch_ce
