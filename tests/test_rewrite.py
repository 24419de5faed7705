"""A user's own template-matching modules, written from the paper's formula in this file, found in their
exported graphs and lowered to tmdeploy's exact forms (tmdeploy.export.template_blocks); hand-written
per-pixel RMS norms through the channels-last rewrites of the INT8 recipes (tmdeploy.export.channels_last).

Every graph is exported as the exporter gives it and cleaned up as ``to_model_proto`` does, then compared on
real onnxruntime sessions: the rewritten graph against the graph as exported and against the module itself.
Untrained seeded weights with a non-trivial μ and τ: exactness does not need training.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tmdeploy.export import FORMS, channels_last, forms, graph, to_onnx
from tmdeploy.export.template_blocks import rewrite_template_blocks
from tmdeploy.models.layers import ClassSemanticBlock, TemplateMatching

SIZE = 16
GLUE = {"Concat", "Slice", "Split", "Gather", "Expand", "Shape", "Where", "ConstantOfShape", "Equal", "Pad"}
MU, LOG_TAU = 0.4, -0.3


class UserTM(nn.Module):
    """``out = ν · softmax([s ; μ] / τ)[:K]`` written as a user might, in one of several spellings."""

    def __init__(self, channels: int, out_channels: int, k: int, spelling: str, stride: int = 1,
                 value_bias: bool = False, value_kernel: int = 1) -> None:
        super().__init__()
        self.k, self.spelling = k, spelling
        extra = 1 if spelling == "zero-channel" else 0  # the null option already one more template channel
        self.templates = nn.Conv2d(channels, k + extra, 3, stride, padding=1)
        self.values = nn.Conv2d(k, out_channels, value_kernel, padding=value_kernel // 2, bias=value_bias)
        self.mu = nn.Parameter(torch.tensor(MU))
        self.log_tau = nn.Parameter(torch.tensor(LOG_TAU))
        self.fold_null()

    def fold_null(self) -> None:
        """In the ``zero-channel`` spelling, the last template has zero weights and bias μ."""
        if self.spelling == "zero-channel":
            with torch.no_grad():
                self.templates.weight[-1].zero_()
                self.templates.bias[-1] = MU

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        s, k, tau = self.templates(x), self.k, self.log_tau.exp()
        n, _, h, w = s.shape
        if self.spelling == "expand-div":  # K read off the scores' shape: the tracer records Shape → Gather
            return torch.softmax(torch.cat([s, self.mu.expand(n, 1, h, w)], 1) / tau, 1)[:, :s.shape[1]]
        if self.spelling == "ones-mul":
            logits = torch.cat([s, self.mu * torch.ones_like(s[:, :1])], dim=-3) * (1 / tau)
            return torch.softmax(logits, dim=-3)[:, :-1]
        if self.spelling == "pad-narrow":
            return torch.softmax(F.pad(s, (0, 0, 0, 0, 0, 1), value=MU) / tau, 1).narrow(1, 0, k)
        if self.spelling == "prescaled-split":
            logits = torch.cat([s / tau, (self.mu / tau).view(1, 1, 1, 1).expand(n, -1, h, w)], 1)
            return torch.softmax(logits, 1).split([k, 1], 1)[0]
        if self.spelling == "full-gather":
            logits = torch.cat([s, torch.full((n, 1, h, w), MU)], 1) * tau.reciprocal()
            return torch.softmax(logits, 1).index_select(1, torch.arange(k))
        if self.spelling == "zero-channel":
            return torch.softmax(s / tau, 1)[:, :k]
        # not template blocks tmdeploy can lower: a data-dependent null logit, the null option first
        if self.spelling == "data-null":
            return torch.softmax(torch.cat([s, s.mean(1, keepdim=True)], 1), 1)[:, :k]
        if self.spelling == "null-first":
            return torch.softmax(torch.cat([self.mu.expand(n, 1, h, w), s], 1) / tau, 1)[:, 1:]
        raise ValueError(self.spelling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(self.probabilities(x))


class UserNet(nn.Module):
    """A small residual TM network: a stride-1 block with K odd, a stride-2 block with K even."""

    def __init__(self, spelling: str, value_bias: bool = False, classifier_softmax: bool = False,
                 value_kernel: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block1 = UserTM(8, 8, 5, spelling, value_bias=value_bias, value_kernel=value_kernel)
        self.block2 = UserTM(8, 12, 6, spelling, stride=2, value_bias=not value_bias)
        self.shortcut2 = nn.Conv2d(8, 12, 1, 2)
        self.head = nn.Linear(12, 10)
        self.classifier_softmax = classifier_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block1(x)
        x = self.shortcut2(x) + self.block2(x)
        logits = self.head(x.mean((2, 3)))
        return torch.softmax(logits, 1) if self.classifier_softmax else logits


def _seeded(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in module.modules():
        for p in m.parameters(recurse=False):
            if p.dim() > 0:  # μ and τ (scalars) keep their values
                nn.init.normal_(p, std=0.4)
    for m in module.modules():
        if isinstance(m, UserTM):
            m.fold_null()
    return module.eval()


def _export(module: nn.Module, exporter: str, opset: int, outputs=("logits",)):
    """The graph ``to_model_proto`` has before metadata: the exporter's, BatchNorm folded, cleaned up."""
    proto, _ = to_onnx._EXPORTERS[exporter](module, torch.randn(2, 1, SIZE, SIZE), opset, list(outputs))
    return graph.clean_up(proto)


def _run(model, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})


def _torch(module: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _close(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


X = np.random.default_rng(0).standard_normal((3, 1, SIZE, SIZE)).astype(np.float32)
SPELLINGS = ["expand-div", "ones-mul", "pad-narrow", "prescaled-split", "full-gather", "zero-channel"]
# every spelling from both exporters at opset 18; the oldest and newest opsets on some (torch.export takes
# seconds per graph, and gives opset 18 at the least)
CASES = ([(s, e, 18) for s in SPELLINGS for e in ("torchscript", "dynamo")]
         + [(s, "torchscript", opset) for s in SPELLINGS for opset in (13, 21)]
         + [(s, "dynamo", 23) for s in ("expand-div", "pad-narrow")])


@pytest.mark.parametrize("spelling, exporter, opset", CASES)
def test_user_template_blocks_are_lowered_exactly_in_every_form(spelling, exporter, opset):
    """Each spelling of the null logit, τ and the slice, from both exporters: every block is lowered to
    every form, the glue goes, and the graph still computes what the module and the raw export compute."""
    module = _seeded(UserNet(spelling, value_bias=spelling in ("ones-mul", "full-gather")))
    raw = _export(module, exporter, opset)
    assert GLUE & set(graph.op_histogram(raw))  # the glue the rewrite must remove is there to begin with
    expected, exported = _torch(module, X), _run(raw, X)
    _close(exported, expected)
    for form in FORMS:
        rewritten, report = rewrite_template_blocks(raw, form)
        ops = graph.op_histogram(graph.check(rewritten))
        assert report.counts == {form: 2} and report.unrecognised == (), (form, report)
        assert not GLUE & set(ops), (form, ops)
        assert ops.get("Softmax", 0) == (2 if form.startswith("folded") else 0), (form, ops)
        assert graph.onnx_opset(rewritten) == opset
        _close(_run(rewritten, X), exported)
        _close(_run(rewritten, X), expected)
        again, second = rewrite_template_blocks(rewritten, form)  # idempotent: nothing left to find
        assert again is rewritten and second.total == 0 and second.unrecognised == ()


class Unregistered(nn.Module):
    """tmdeploy's own layers inside an architecture the registry does not know, with per-patch class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.tm = TemplateMatching(8, 12, 5, stride=2)
        self.shortcut = nn.Conv2d(8, 12, 1, 2)
        self.classes = ClassSemanticBlock(12, 10)
        self.head = nn.Linear(12, 10)
        for layer in (self.tm, self.classes.tm):
            layer.null_logit.data.fill_(MU)
            layer.log_temperature.data.fill_(LOG_TAU)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        x, patch_logits = self.classes.forward_with_patch_logits(self.shortcut(x) + self.tm(x))
        return self.head(x.mean((2, 3))), patch_logits


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_tmdeploy_layer_in_an_unregistered_net_rewritten_like_its_pytorch_forms(exporter):
    """The layer exported in its reference (training) form, then rewritten, is the graph the PyTorch-level
    form exports: the same ops, the same values; the raw class scores stay a correct second output."""
    torch.manual_seed(0)
    module = Unregistered().eval()
    outputs = ("logits", "patch_logits")
    reference = _export(module, exporter, 18, outputs)
    expected = _torch(module, X)
    for form in FORMS:
        rewritten, report = rewrite_template_blocks(reference, form)
        own = _export(forms.apply_form(module, form), exporter, 18, outputs)
        assert report.counts == {form: 2}
        assert graph.op_histogram(graph.check(rewritten)) == graph.op_histogram(own)
        _close(_run(rewritten, X), _run(own, X))
        _close(_run(rewritten, X), expected)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("spelling", ["data-null", "null-first"])
def test_unrecognised_template_blocks_are_left_as_exported_and_named(spelling, exporter):
    """A soft-max that looks like a template block but is not one tmdeploy can lower stays as exported
    (the same graph back, still correct) and is named; the classifier's soft-max at the end is not."""
    module = _seeded(UserNet(spelling, classifier_softmax=True))
    raw = _export(module, exporter, 18)
    softmaxes = [n.name for n in raw.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 3
    rewritten, report = rewrite_template_blocks(raw, "normalized")
    assert rewritten is raw and report.total == 0 and report.summary() == "none"
    assert len(report.unrecognised) == 2 and set(report.unrecognised) < set(softmaxes)
    classifier = next(n.name for n in raw.graph.node if n.op_type == "Softmax" and n.output[0] == "logits")
    assert classifier not in report.unrecognised
    line = report.warning()
    assert "\n" not in line and set(line.split(": ", 1)[1].split(", ")) == set(report.unrecognised)
    _close(_run(rewritten, X), _torch(module, X))


def test_forms_fall_back_to_normalized_where_the_value_conv_cannot_take_them():
    """``deferred`` divides after the value conv, exact only for a 1×1 one; the folded forms change the
    value conv's weights, which p read elsewhere forbids. Those blocks get ``normalized``, still exact."""
    module = _seeded(UserNet("expand-div", value_kernel=3))
    raw = _export(module, "torchscript", 18)
    rewritten, report = rewrite_template_blocks(raw, "deferred")
    assert report.counts == {"deferred": 1, "normalized": 1}
    _close(_run(rewritten, X), _torch(module, X))

    class ProbabilitiesOut(nn.Module):  # p itself a second output
        def __init__(self) -> None:
            super().__init__()
            self.block = UserTM(1, 4, 3, "expand-div")

        def forward(self, x):
            p = self.block.probabilities(x)
            return self.block.values(p), p

    module = _seeded(ProbabilitiesOut())
    raw = _export(module, "torchscript", 18, ("mixed", "p"))
    rewritten, report = rewrite_template_blocks(raw, "folded")
    assert report.counts == {"normalized": 1} and not GLUE & set(graph.op_histogram(rewritten))
    assert [o.name for o in rewritten.graph.output] == ["mixed", "p"]
    _close(_run(rewritten, X), _torch(module, X))


def test_graphs_without_template_blocks_come_back_unchanged():
    """A plain CNN ending in a classifier soft-max, and a graph at opset 12 (whose Softmax flattens): the
    same object back, nothing counted, nothing named."""
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10), nn.Softmax(1))
    for proto in (_export(_seeded(plain), "torchscript", 18), _export(_seeded(UserNet("expand-div")), "torchscript", 12)):
        before = proto.SerializeToString()
        rewritten, report = rewrite_template_blocks(proto, "normalized")
        assert rewritten is proto and report.counts == {} and report.unrecognised == () and report.warning() is None
        assert proto.SerializeToString() == before


class HandNorms(nn.Module):
    """Per-pixel RMS norms as users write them by hand, and two that only look like one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        eps = 1e-6
        a = x * torch.rsqrt((x * x).mean(1, keepdim=True) + eps)
        b = a / torch.sqrt(a.pow(2).mean(1, keepdim=True) + eps)
        c = b / (b.pow(2).mean(dim=-3, keepdim=True) + eps).sqrt()
        d = c / torch.sqrt(eps + torch.square(c).mean(1, keepdim=True))
        not_over_channels = d / torch.sqrt((d * d).mean((1, 2), keepdim=True) + eps)
        other_numerator = (not_over_channels + 1) / torch.sqrt((not_over_channels ** 2).mean(1, keepdim=True) + eps)
        return other_numerator


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hand_written_rms_norms_stay_exact_through_the_channels_last_rewrite(exporter):
    """The INT8 onnxruntime recipes' RMS-norm rewrite takes each spelling of ``x / sqrt(mean_c(x²) + ε)``
    (rsqrt, pow, ``.sqrt()``, ε first, dim -3) and leaves the look-alikes alone; on the FP32 graph its output
    is the unrewritten graph's to rounding, zero pixels and large values included."""
    module = _seeded(HandNorms())
    fp32 = _export(module, exporter, 18, ("y",))
    rewritten = channels_last.channels_last_float_ops(fp32)
    assert graph.op_histogram(rewritten).get("RMSNormalization") == 4, graph.op_histogram(rewritten)
    assert graph.op_histogram(rewritten)["Sqrt"] == 2  # the two look-alikes
    x = X * 40
    x[0] = 0
    np.testing.assert_allclose(_run(rewritten, x)[0], _run(fp32, x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(rewritten, x)[0], _torch(module, x)[0], rtol=1e-4, atol=1e-5)
