"""The exact forms of a template-matching block found in a graph (``tmdeploy.export.template_blocks``),
written as the ops the PyTorch-level forms (``tmdeploy.export.forms``) export: docs/models.md, "Export forms".

Each lowering reads the block's template conv (τ and μ folded into new weights; the exported conv stays
where anything else reads its raw scores) and rewires the block's probabilities p or its value conv.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx_graphsurgeon as gs

PAD_MULTIPLE = 8  # folded-padded: K+1 channels padded to a multiple of this (tmdeploy.export.forms too)
PAD_LOGIT = -1.0e4  # exp(-1e4 - m) underflows to exactly 0 in float32 for any realistic m
_AXES_INPUT_OPSET = 18  # ReduceMax takes its axes as an input from opset 18, an attribute before


@dataclass
class TemplateBlock:
    """One block as found: logits = scale·Conv(x)[:K] and the null logit, soft-max, p."""

    softmax: gs.Node
    conv: gs.Node  # the template conv: its first ``templates`` output channels are the scores
    templates: int  # K
    scale: float  # the logits are scale·s: 1/τ and any other scalar factor
    null_logit: float  # μ/τ, the null channel's logit as the soft-max sees it
    probabilities: gs.Variable  # p, N×K×H×W
    value_conv: gs.Node | None  # p's only consumer, a conv with constant weights (ν), if it is one
    rank: int


def constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def template_weights(conv: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    """A conv's constant weight and bias (zeros where it has none)."""
    weight = constant_values(conv.inputs[1])
    bias = constant_values(conv.inputs[2]) if len(conv.inputs) > 2 else None
    return weight, (np.zeros(weight.shape[0], weight.dtype) if bias is None else bias)


def lower(graph: gs.Graph, names: Names, block: TemplateBlock, form: str, opset: int) -> str:
    """Rewrite ``block`` in ``graph`` to ``form``, or to ``normalized`` where its value conv cannot take
    ``form``; returns the form applied. The old nodes are left for ``graph.cleanup``."""
    applied = _feasible(block, form)
    _LOWERINGS[applied](_Emitter(graph, names, block), block, opset)
    return applied


def _feasible(block: TemplateBlock, form: str) -> str:
    """``form``, or ``normalized`` where the value conv cannot take it: the folded forms give ν a zero
    column (a conv with constant weights and one group), ``deferred`` divides after it (a 1×1 conv)."""
    value, template_groups = block.value_conv, block.conv.attrs.get("group", 1)
    if form.startswith("folded"):
        ok = value is not None and value.attrs.get("group", 1) == 1 and template_groups == 1
    elif form == "deferred":
        ok = value is not None and _pointwise(value)
    else:
        ok = True
    return form if ok else "normalized"


def _pointwise(conv: gs.Node) -> bool:
    """A 1×1 conv at stride 1 without padding and one group: it commutes with a per-pixel division."""
    kernel = constant_values(conv.inputs[1]).shape[2:]
    return (all(k == 1 for k in kernel) and all(s == 1 for s in conv.attrs.get("strides", [1]))
            and not any(conv.attrs.get("pads", [0])) and conv.attrs.get("group", 1) == 1)


class Names:
    """Fresh tensor and node names, and each added node's origin."""

    def __init__(self, graph: gs.Graph) -> None:
        self.taken = set(graph.tensors()) | {n.name for n in graph.nodes}
        self.origins: dict[str, str] = {}

    def __call__(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


class _Emitter:
    """Adds one block's nodes, named after its Softmax (so the TorchScript exporter's scope is kept)."""

    def __init__(self, graph: gs.Graph, names: Names, block: TemplateBlock) -> None:
        self.graph, self.names, self.origin = graph, names, block.softmax.name
        self.prefix = block.softmax.name or "template_block"
        self.dtype = constant_values(block.conv.inputs[1]).dtype

    def constant(self, suffix: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.names(f"{self.prefix}_{suffix}"), np.ascontiguousarray(values))

    def op(self, op: str, inputs: list, attrs: dict | None = None, out: gs.Variable | None = None,
           origin: gs.Node | None = None) -> gs.Variable:
        name = self.names(f"{self.prefix}_{op}")
        out = out if out is not None else gs.Variable(self.names(f"{name}_output"), dtype=self.dtype)
        self.graph.nodes.append(gs.Node(op, name, attrs or {}, inputs, [out]))
        self.names.origins[name] = origin.name if origin is not None else self.origin
        return out

    def reclaim(self, tensor: gs.Variable) -> gs.Variable:
        """Detach ``tensor`` from its producer, which gets a fresh output, so that a new node can produce it:
        its consumers and its place among the graph's outputs stay."""
        producer = tensor.inputs[0]
        slot = producer.outputs.index(tensor)
        producer.outputs[slot] = gs.Variable(self.names(f"{tensor.name}_before"), dtype=self.dtype)
        return tensor


def _scaled_weights(block: TemplateBlock) -> tuple[np.ndarray, np.ndarray]:
    """scale·ω and scale·b of the K template channels (τ folded in), in float64 until cast."""
    weight, bias = template_weights(block.conv)
    k = block.templates
    return weight[:k].astype(np.float64) * block.scale, bias[:k].astype(np.float64) * block.scale


def _template_scores(emit: _Emitter, block: TemplateBlock, weight: np.ndarray, bias: np.ndarray) -> gs.Variable:
    """A new template conv; the exported one stays where something else reads its raw scores (patch logits)."""
    conv = block.conv
    inputs = [conv.inputs[0], emit.constant("templates_weight", weight.astype(emit.dtype)),
              emit.constant("templates_bias", bias.astype(emit.dtype))]
    return emit.op("Conv", inputs, dict(conv.attrs), origin=conv)


def _exponentials(emit: _Emitter, block: TemplateBlock, s: gs.Variable, opset: int) -> tuple[gs.Variable, gs.Variable]:
    """``e = exp(s − m)`` and ``Σe + exp(μ − m)``, m = max(max_k s_k, μ): as ``forms.Deferred``
    exports them, the pattern ``channels_last.drop_softmax_shifts`` looks for."""
    null = emit.constant("null_logit", np.full((1,) * block.rank, block.null_logit, emit.dtype))
    axes = emit.constant("axes", np.array([1], np.int64))
    if opset >= _AXES_INPUT_OPSET:
        peak = emit.op("ReduceMax", [s, axes], {"keepdims": 1})
    else:
        peak = emit.op("ReduceMax", [s], {"axes": [1], "keepdims": 1})
    m = emit.op("Max", [peak, null])
    e = emit.op("Exp", [emit.op("Sub", [s, m])])
    e_null = emit.op("Exp", [emit.op("Sub", [null, m])])
    return e, emit.op("Add", [emit.op("ReduceSum", [e, axes], {"keepdims": 1}), e_null])


def _lower_normalized(emit: _Emitter, block: TemplateBlock, opset: int) -> None:
    """``p = e / (Σe + exp(μ − m))`` on the K template channels, p's consumers unchanged."""
    e, denominator = _exponentials(emit, block, _template_scores(emit, block, *_scaled_weights(block)), opset)
    emit.op("Div", [e, denominator], out=emit.reclaim(block.probabilities))


def _lower_deferred(emit: _Emitter, block: TemplateBlock, opset: int) -> None:
    """``Conv(e; ν) / (Σe + exp(μ − m))``, the value conv's bias (if any) added after the division."""
    e, denominator = _exponentials(emit, block, _template_scores(emit, block, *_scaled_weights(block)), opset)
    value = block.value_conv
    out = emit.reclaim(value.outputs[0])
    value.inputs[0] = e
    if len(value.inputs) > 2:
        bias = constant_values(value.inputs.pop(2)).reshape(1, -1, *[1] * (block.rank - 2))
        emit.op("Add", [emit.op("Div", [value.outputs[0], denominator]), emit.constant("values_bias", bias)], out=out)
    else:
        emit.op("Div", [value.outputs[0], denominator], out=out)


def _lower_folded(emit: _Emitter, block: TemplateBlock, opset: int, multiple: int = 1) -> None:
    """``Conv(x; [scale·ω; 0], [scale·b; μ]) → Softmax → Conv(; [ν, 0])``, the channels padded to a multiple
    of ``multiple`` with channels whose logit PAD_LOGIT gives them exactly 0 weight."""
    weight, bias = _scaled_weights(block)
    k = block.templates
    rows = -(-(k + 1) // multiple) * multiple
    folded_weight = np.zeros((rows, *weight.shape[1:]))
    folded_weight[:k] = weight
    folded_bias = np.full(rows, PAD_LOGIT)
    folded_bias[:k], folded_bias[k] = bias, block.null_logit
    q = emit.op("Softmax", [_template_scores(emit, block, folded_weight, folded_bias)], {"axis": 1})
    value = block.value_conv
    nu = constant_values(value.inputs[1])
    padded = np.zeros((nu.shape[0], rows, *nu.shape[2:]), nu.dtype)
    padded[:, :k] = nu
    value.inputs[0] = q
    value.inputs[1] = emit.constant("values_weight", padded)


_LOWERINGS = {
    "folded": _lower_folded,
    "folded-padded": partial(_lower_folded, multiple=PAD_MULTIPLE),
    "deferred": _lower_deferred,
    "normalized": _lower_normalized,
}
