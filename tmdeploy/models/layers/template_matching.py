"""Template matching with a soft-max over K templates plus a null option (docs/models.md, "Template-matching block").

``Conv → BN → ReLU → Conv`` read as template matching makes K independent "template k or nothing"
choices whose thresholds come from batch statistics. :class:`TemplateMatching` makes one joint,
entropy-smoothed choice over the K templates and a null option of constant score μ instead:

    s = Conv_k×k(x; ω, b)                        raw template scores, N×K×H×W
    p = softmax_c([s ; μ] / τ)[:, :K]            the null probability is dropped
    out = Conv1x1(p; ν)

There are no batch statistics, so the output of a sample does not depend on the rest of its batch,
in train or eval mode, and there is nothing to fold at export time except τ and μ (the exporter does
that; the form here is the plain reference one on purpose).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TemplateMatching(nn.Module):
    """Soft-max over ``num_templates`` templates plus a null option, then a 1×1 value conv."""

    def __init__(self, in_channels: int, out_channels: int, num_templates: int,
                 kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.num_templates = num_templates
        # ω, b: one template (and bias) per output channel of the matching conv.
        self.templates = nn.Conv2d(in_channels, num_templates, kernel_size, stride,
                                   padding=kernel_size // 2, bias=True)
        # ν: the value vector emitted for each template.
        self.values = nn.Conv2d(num_templates, out_channels, 1, bias=False)
        # μ: constant score of the null option ("no template matches").
        self.null_logit = nn.Parameter(torch.zeros(()))
        # τ = exp(log τ) stays positive without a constraint; init τ = 1.
        self.log_temperature = nn.Parameter(torch.zeros(()))

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def match(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the raw template scores ``s`` and their probabilities ``p`` (both N×K×H×W)."""
        s = self.templates(x)
        n, _, h, w = s.shape
        logits = torch.cat([s, self.null_logit.expand(n, 1, h, w)], 1) / self.temperature
        p = torch.softmax(logits, 1)[:, : self.num_templates]
        return s, p

    def forward(self, x: Tensor) -> Tensor:
        return self.values(self.match(x)[1])

    def forward_with_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(forward(x), s)``; the exporter's forms (``tmdeploy.export.forms``) implement the same method."""
        s, p = self.match(x)
        return self.values(p), s

    def extra_repr(self) -> str:
        return f"num_templates={self.num_templates}"


class PixelRMSNorm(nn.Module):
    """``x / sqrt(mean_c(x²) + ε)`` at every pixel of every sample: a per-sample statistic, never a batch one.

    Template scores are dot products, so without it they grow with the residual stream's magnitude and
    the soft-max saturates or stays flat depending on depth; with it every block matches templates
    against inputs of unit RMS. It has no parameters (the template conv after it absorbs any per-channel
    gain), so it exports as ``Mul → ReduceMean → Add → Sqrt → Div`` with nothing to fold.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x / torch.sqrt((x * x).mean(1, keepdim=True) + self.eps)


class TMBlock(nn.Module):
    """Residual block ``shortcut(x) + ν·softmax(match(norm(reduce(x))))``: a BN-free bottleneck.

    With ``width`` (the default in ``rn26-tm``) the branch mirrors the BN bottleneck it replaces: a 1×1
    ``reduce`` to ``width`` channels, a per-pixel RMS normalisation, then K 3×3 templates on that reduced
    map and a 1×1 value conv back to ``out_channels``; with K = width it costs what the bottleneck costs.
    ``width=None, input_norm=False`` is the first configuration (templates on the raw full-width input),
    kept for comparison. The shortcut is a biased 1×1 conv (no BatchNorm) when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, num_templates: int | None = None,
                 width: int | None = None, input_norm: bool = True) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, width, 1, bias=False) if width else nn.Identity()
        self.norm = PixelRMSNorm() if input_norm else nn.Identity()
        self.tm = TemplateMatching(width or in_channels, out_channels, num_templates or width or out_channels,
                                   kernel_size=3, stride=stride)
        if in_channels == out_channels and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.tm(self.norm(self.reduce(x)))


class ClassSemanticBlock(nn.Module):
    """TM over the classes as templates (docs/models.md, "Class-semantic block"): ``x + Σ_c P_c ν_c``.

    The 1×1 template conv is the per-patch class classifier, so its raw scores S (N×C_cls×h×w) are
    the patch logits of the auxiliary loss; they are part of the inference graph because P needs them.
    """

    def __init__(self, channels: int, num_classes: int, input_norm: bool = False) -> None:
        super().__init__()
        # In a network without BatchNorm the residual stream's scale drifts, so the class templates match
        # a per-pixel RMS-normalised map there (``input_norm``); after a BN-ReLU stage they need not.
        self.norm = PixelRMSNorm() if input_norm else nn.Identity()
        self.tm = TemplateMatching(channels, channels, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.tm(self.norm(x))

    def forward_with_patch_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # Only forward_with_scores is used, so this keeps working when the exporter swaps ``tm`` for a form.
        mixed, s = self.tm.forward_with_scores(self.norm(x))
        return x + mixed, s
