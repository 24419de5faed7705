"""Exact export forms of the template-matching block (docs/models.md, "Export forms").

Training code keeps the plain form ``softmax([s; μ] / τ)[:, :K]``, which exports to Concat, Expand,
Shape and Slice nodes. For export, each :class:`TemplateMatching` is swapped for one of these modules,
built from its trained weights with τ and μ folded in. All of them compute the same function to float
rounding; which one is fastest depends on the runtime, so the choice is an option measured by
``benchmarks/tm_forms.py``:

``folded``         the null option becomes one extra template channel (zero weights, bias μ/τ) and ν
                   gets a zero column: ``Conv → Softmax → Conv``.
``folded-padded``  ``folded`` with the K+1 channels padded to a multiple of 8 by channels whose bias is
                   -1e4 (their soft-max weight is exactly 0 in float32), because odd channel counts
                   defeat the convolution kernels' channel blocking.
``deferred``       normalises after the value conv, since the soft-max denominator is one scalar per
                   pixel: ``e = exp(s - m)``, ``out = Conv(e; ν) / (Σ e + exp(μ/τ - m))``.
``normalized``     the soft-max written out on the K template channels before the value conv:
                   ``p = e / (Σ e + exp(μ/τ - m))``, ``out = Conv(p; ν)``. It divides K values per pixel
                   where ``deferred`` divides C_out, and the value conv's output goes straight into the
                   residual Add, which onnxruntime fuses into the convolution in its blocked layout.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from tmdeploy.export.options import FORMS
from tmdeploy.export.template_lowering import PAD_LOGIT, PAD_MULTIPLE
from tmdeploy.models.layers import TemplateMatching


def _folded_weights(tm: TemplateMatching) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ω/τ, b/τ, μ/τ and ν of a trained block, detached and in float32."""
    tau = tm.temperature.detach().float()
    weight = tm.templates.weight.detach().float() / tau
    bias = tm.templates.bias.detach().float() / tau
    return weight, bias, (tm.null_logit.detach().float() / tau), tm.values.weight.detach().float()


def _scores_conv(tm: TemplateMatching) -> nn.Conv2d:
    """A copy of the raw template conv: the class-semantic block's per-patch logits S when they are exported."""
    return copy.deepcopy(tm.templates).float()


class _ExportForm(nn.Module):
    """Common interface of the forms: ``forward`` and ``forward_with_scores`` like TemplateMatching."""

    def __init__(self, tm: TemplateMatching) -> None:
        super().__init__()
        self.scores = _scores_conv(tm)

    def forward_with_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self(x), self.scores(x)


class Folded(_ExportForm):
    """``Conv(K+1 or padded) → Softmax(axis=1) → Conv``: the null option as one more template channel."""

    def __init__(self, tm: TemplateMatching, pad_to_multiple: int = 1) -> None:
        super().__init__(tm)
        weight, bias, null, values = _folded_weights(tm)
        k = weight.shape[0]
        channels = -(-(k + 1) // pad_to_multiple) * pad_to_multiple
        conv = tm.templates
        self.templates = nn.Conv2d(conv.in_channels, channels, conv.kernel_size, conv.stride, conv.padding,
                                   conv.dilation, conv.groups, bias=True)
        self.values = nn.Conv2d(channels, values.shape[0], 1, bias=False)
        with torch.no_grad():
            self.templates.weight.zero_()
            self.templates.weight[:k] = weight
            self.templates.bias.fill_(PAD_LOGIT)
            self.templates.bias[:k] = bias
            self.templates.bias[k] = null
            self.values.weight.zero_()
            self.values.weight[:, :k] = values

    def forward(self, x: Tensor) -> Tensor:
        return self.values(torch.softmax(self.templates(x), dim=1))


class FoldedPadded(Folded):
    """``folded`` with the K+1 channels padded to a multiple of 8: odd channel counts defeat channel blocking."""

    def __init__(self, tm: TemplateMatching) -> None:
        super().__init__(tm, pad_to_multiple=PAD_MULTIPLE)


class Deferred(_ExportForm):
    """Soft-max normalised after the value conv: C_out divisions per pixel instead of K."""

    def __init__(self, tm: TemplateMatching) -> None:
        super().__init__(tm)
        weight, bias, null, values = _folded_weights(tm)
        self.templates = copy.deepcopy(tm.templates).float()
        self.values = copy.deepcopy(tm.values).float()
        with torch.no_grad():
            self.templates.weight.copy_(weight)
            self.templates.bias.copy_(bias)
            self.values.weight.copy_(values)
        self.register_buffer("null_logit", null.reshape(1, 1, 1, 1))

    def exponentials(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``e = exp(s - m)`` and the soft-max denominator ``Σ e + exp(μ/τ - m)``, m the largest logit."""
        s = self.templates(x)
        m = torch.maximum(s.amax(dim=1, keepdim=True), self.null_logit)
        e = torch.exp(s - m)
        return e, e.sum(dim=1, keepdim=True) + torch.exp(self.null_logit - m)

    def forward(self, x: Tensor) -> Tensor:
        e, denominator = self.exponentials(x)
        return self.values(e) / denominator


class Normalized(Deferred):
    """The soft-max written out on the K template channels, then the value conv: K divisions per pixel."""

    def forward(self, x: Tensor) -> Tensor:
        e, denominator = self.exponentials(x)
        return self.values(e / denominator)


def count_blocks(model: nn.Module) -> int:
    """The template-matching layers :func:`apply_form` swaps for a form."""
    return sum(isinstance(module, TemplateMatching) for module in model.modules())


def apply_form(model: nn.Module, form: str) -> nn.Module:
    """A copy of ``model`` with every TemplateMatching module replaced by its export form
    (one of ``tmdeploy.export.options.FORMS``, which ``ExportOptions.validate`` checks, and names its class)."""
    build = globals()[FORMS[form]]
    model = copy.deepcopy(model).eval()
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, TemplateMatching)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, build(module))
    return model
