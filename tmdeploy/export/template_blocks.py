"""Template-matching soft-max blocks found in any exported graph and lowered to tmdeploy's exact forms.

tmdeploy's own :class:`TemplateMatching` is swapped for an export form before ``torch.onnx.export``
(``tmdeploy.export.forms``); a user's own module written from the paper's formula is not, and exports as

    s = Conv(x)                                   the K template scores
    logits = Concat_1([s, μ broadcast to N×1×H×W]) / τ
    p = Slice_1(Softmax_1(logits), 0, K)          the null channel dropped
    out = Conv1x1(p; ν)

with ``Shape → Gather → Unsqueeze → Concat → ConstantOfShape → Equal → Where → Expand`` (or whatever else
the exporter wrote) computing the broadcast. :func:`rewrite_template_blocks` finds such blocks in the graph
and lowers each to the requested form of docs/models.md, "Export forms", with τ and μ folded into the
template conv's weights, as the same ops the PyTorch-level forms give.

Recognised: the null logit as one channel of a ``Concat`` over channels (any axis spelling) whose value,
with the batch size fixed, folds to one constant (Expand, ConstantOfShape, ``μ·ones``, a constant tensor);
as a ``Pad`` of the channel axis with a constant; or as an extra template-conv channel with zero weights.
Scalar ``Div``/``Mul`` by constants before or after the concatenation (τ, 1/τ). ``Softmax`` over channels,
then ``Slice``, ``Split`` or ``Gather`` keeping channels 0..K-1. Anything else that looks like one (a channel
soft-max of a feature map fed by a Concat or Pad, or sliced after) is left as exported and named.

Written on onnx-graphsurgeon by hand: no maintained pass knows this block.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from tmdeploy.export.graph import export_like, onnx_opset
from tmdeploy.export.options import FORMS, MIN_OPSET
from tmdeploy.export.template_lowering import Names, TemplateBlock, constant_values, lower, template_weights
from tmdeploy.sanitize import clean

_FIXED_BATCHES = (2, 3)  # the null channel must fold to the same constant at both batch sizes
_SMALL = 64  # integer tensors up to this size are kept from the fixed-batch folding (slice limits, shapes)


@dataclass(frozen=True)
class BlockRewrite:
    """What :func:`rewrite_template_blocks` did.

    ``counts``: form → blocks lowered to it (a block whose value conv cannot take the requested
    ``folded``/``deferred`` form is lowered to ``normalized``, the one every block can take).
    ``unrecognised``: names of the Softmax nodes that look like template blocks but were left as exported.
    ``node_origins``: each added node's name → the exported node it stands for (for module scopes).
    """

    counts: dict[str, int] = field(default_factory=dict)
    unrecognised: tuple[str, ...] = ()
    node_origins: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """``"normalized:3"``, ``"deferred:2,normalized:1"``, or ``"none"``: for metadata and ``info``."""
        return ",".join(f"{form}:{n}" for form, n in sorted(self.counts.items())) or "none"

    def warning(self) -> str | None:
        """One line naming the unrecognised blocks (names from the file, sanitised), or None."""
        if not self.unrecognised:
            return None
        names = ", ".join(clean(n)[:120] for n in self.unrecognised[:8])
        more = f" and {len(self.unrecognised) - 8} more" if len(self.unrecognised) > 8 else ""
        return (f"{len(self.unrecognised)} soft-max block(s) look like template matching but were not recognised, "
                f"left as exported (correct, only slower): {names}{more}")


def rewrite_template_blocks(model: onnx.ModelProto, form: str) -> tuple[onnx.ModelProto, BlockRewrite]:
    """Lower every recognised template-matching block of ``model`` to ``form`` (one of ``FORMS``).

    ``model``: an exported FP32 graph after ``graph.clean_up`` (constants folded, batch axis dynamic or
    not), opset ≥ 13. Returns the rewritten graph (same IR version, producer and opsets; not checked:
    the caller runs ``graph.check``) and what was done. A graph with nothing to rewrite comes back as the
    same object with zero counts; rewriting a rewritten graph changes nothing.
    """
    if form not in FORMS:
        raise ValueError(f"unknown template-matching form {form!r}; expected one of {FORMS}")
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    if not softmaxes or onnx_opset(model) < MIN_OPSET:  # before 13 Softmax flattens: no channel soft-max to find
        return model, BlockRewrite()
    graph = gs.import_onnx(model)
    ranks, outputs = _ranks(model), {t.name for t in graph.outputs}
    candidates = [n for n in graph.nodes if n.op == "Softmax" and _looks_like_block(n, ranks)]
    known = _FixedBatch(model, _FIXED_BATCHES) if candidates else None
    matches = [(softmax, _match(softmax, ranks, known, outputs)) for softmax in candidates]
    unrecognised = tuple(softmax.name for softmax, block in matches if block is None)
    blocks = [block for _, block in matches if block is not None]
    if not blocks:
        return model, BlockRewrite(unrecognised=unrecognised)
    names, counts = Names(graph), {}
    for block in blocks:
        applied = lower(graph, names, block, form, onnx_opset(model))
        counts[applied] = counts.get(applied, 0) + 1
    graph.cleanup().toposort()
    return export_like(graph, model), BlockRewrite(counts, unrecognised, names.origins)


# ---- finding blocks ----------------------------------------------------------------------------------


def _with_fixed_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose inputs' first axis is ``batch`` (where it was symbolic), its shapes inferred again."""
    fixed = copy.deepcopy(model)
    del fixed.graph.value_info[:]
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    for value in fixed.graph.output:
        value.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(fixed)


class _FixedBatch:
    """What the graph's tensors hold once the batch size is fixed, the same at every size tried.

    With the batch fixed, the exporter's glue (Shape … Where → Expand, ConstantOfShape, μ·ones, slice
    limits read off a shape) has static inputs, so graphsurgeon's constant folding (onnxruntime) evaluates
    it, whatever it is: the null channel becomes one repeated value, the slice limits small integers.
    """

    def __init__(self, model: onnx.ModelProto, batches: tuple[int, ...]) -> None:
        self.runs = [self._fold(model, batch) for batch in batches]

    @staticmethod
    def _fold(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
        graph = gs.import_onnx(_with_fixed_batch(model, batch))
        for shape in [n for n in graph.nodes if n.op == "Shape"]:
            # by hand: graphsurgeon's own shape folding ignores Shape's start and end (opset 15), which the
            # dynamo exporter uses for the batch size
            dims = shape.inputs[0].shape
            if dims is not None and all(isinstance(d, int) for d in dims):
                start, end = shape.attrs.get("start", 0), shape.attrs.get("end", len(dims))
                shape.outputs[0].to_constant(np.array(dims[start:end], np.int64))
                shape.outputs.clear()
        graph.fold_constants(fold_shapes=False, partitioning="basic")
        folded = {}
        for name, tensor in graph.tensors().items():
            values = constant_values(tensor)
            if values is None or not values.size:
                continue
            if np.issubdtype(values.dtype, np.integer) and values.size <= _SMALL:
                folded[name] = values
            elif np.issubdtype(values.dtype, np.floating) and np.all(values == values.flat[0]):
                folded[name] = np.broadcast_to(values.flat[0], values.shape)  # one value: no copy
        return folded

    def integers(self, tensor: gs.Tensor) -> np.ndarray | None:
        """A constant's values, or what a small integer tensor folds to (the same at every batch size)."""
        if constant_values(tensor) is not None:
            return constant_values(tensor)
        found = [run.get(tensor.name) for run in self.runs]
        same = all(f is not None and f.dtype.kind == "i" and np.array_equal(f, found[0]) for f in found)
        return found[0] if same else None

    def uniform(self, tensor: gs.Tensor) -> list[tuple[float, tuple]]:
        """(value, shape) at each batch size tried, where ``tensor`` holds one repeated float; else []."""
        values = constant_values(tensor)
        found = [values] if values is not None else [run.get(tensor.name) for run in self.runs]
        if any(f is None or f.dtype.kind != "f" or not np.all(f == f.flat[0]) for f in found):
            return []
        return [(float(f.flat[0]), f.shape) for f in found]


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in
            [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
            if v.type.tensor_type.HasField("shape")}


def _producer(tensor: gs.Tensor, *ops: str) -> gs.Node | None:
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    return node if node is not None and node.op in ops else None


def _scalar(tensor: gs.Tensor, rank: int) -> float | None:
    """A one-element constant that broadcasts without changing a rank-``rank`` tensor's shape."""
    value = constant_values(tensor)
    return float(value.item()) if value is not None and value.size == 1 and value.ndim <= rank else None


def _unscaled(tensor: gs.Tensor, rank: int) -> tuple[gs.Tensor, float]:
    """Up through ``Mul`` and ``Div`` by scalar constants: (the tensor before them, their product)."""
    scale = 1.0
    while (node := _producer(tensor, "Mul", "Div")) is not None:
        a, b = node.inputs
        if node.op == "Div" and _scalar(b, rank):  # not by 0
            tensor, scale = a, scale / _scalar(b, rank)
        elif node.op == "Mul" and _scalar(b, rank) is not None:
            tensor, scale = a, scale * _scalar(b, rank)
        elif node.op == "Mul" and _scalar(a, rank) is not None:
            tensor, scale = b, scale * _scalar(a, rank)
        else:
            break
    return tensor, scale


def _on_channels(node: gs.Node, rank: int, default: int) -> bool:
    axis = node.attrs.get("axis", default)
    return -rank <= axis < rank and axis % rank == 1


def _looks_like_block(softmax: gs.Node, ranks: dict[str, int]) -> bool:
    """A channel soft-max of a feature map fed by a Concat or Pad, or sliced after: not a classifier's."""
    rank = ranks.get(softmax.inputs[0].name, 0)
    if rank < 3 or not _on_channels(softmax, rank, -1):
        return False
    fed = _producer(_unscaled(softmax.inputs[0], rank)[0], "Concat", "Pad")
    sliced = {"Slice", "Split", "Gather", "GatherND", "GatherElements"} & {n.op for n in softmax.outputs[0].outputs}
    return bool(fed or sliced)


def _constant_weights(conv: gs.Node) -> bool:
    return all(constant_values(t) is not None for t in conv.inputs[1:])


def _template_conv(tensor: gs.Tensor) -> gs.Node | None:
    conv = _producer(tensor, "Conv")
    return conv if conv is not None and _constant_weights(conv) else None


def _null_value(null: gs.Tensor, rank: int, known: _FixedBatch) -> float | None:
    """μ if ``null`` is one channel holding one constant value (at every fixed batch size tried)."""
    found = known.uniform(null)
    if not found or any(value != found[0][0] or len(shape) != rank or shape[1] != 1 for value, shape in found):
        return None
    return found[0][0]


def _logit_parts(logits: gs.Tensor, rank: int, known: _FixedBatch) -> tuple[gs.Node, int, float, float] | None:
    """(template conv, K, scale of its scores, null logit) of the soft-max's input before its scalar factors."""
    node = _producer(logits, "Concat", "Pad", "Conv")
    if node is None:
        return None
    if node.op == "Concat" and len(node.inputs) == 2 and _on_channels(node, rank, 0):
        source, scale = _unscaled(node.inputs[0], rank)
        null = _null_value(node.inputs[1], rank, known)
    elif node.op == "Pad" and node.attrs.get("mode", "constant") in ("constant", b"constant"):
        pads, value, axes = (node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None
                             for i in (1, 2, 3))
        wanted = np.zeros(2 * rank, np.int64)
        wanted[rank + 1] = 1  # one channel after the last of axis 1, nothing elsewhere
        pads = known.integers(pads) if pads is not None else None
        if pads is None or pads.shape != wanted.shape or not np.array_equal(pads, wanted) or axes is not None:
            return None
        source, scale = _unscaled(node.inputs[0], rank)
        null = _scalar(value, rank) if value is not None else 0.0
    else:  # the null option already a template channel: zero weights, its bias the logit
        weight, bias = template_weights(node) if _template_conv(logits) else (None, None)
        if weight is None or weight.shape[0] < 2 or np.any(weight[-1]):
            return None
        return node, weight.shape[0] - 1, 1.0, float(bias[-1])
    conv = _template_conv(source)
    if conv is None or null is None:
        return None
    return conv, constant_values(conv.inputs[1]).shape[0], scale, null


def _keeps_first(node: gs.Node, rank: int, templates: int, known: _FixedBatch, outputs: set) -> bool:
    """Whether ``node``'s first output is exactly channels 0..K-1 of its K+1-channel input."""
    if node.op == "Slice":
        limits = [known.integers(t) for t in node.inputs[1:]]  # starts, ends, axes, steps
        if len(limits) < 3 or any(v is None or v.size != 1 for v in limits) or limits[2].item() % rank != 1:
            return False
        start, end = (int(v.item()) + templates + 1 if v.item() < 0 else int(v.item()) for v in limits[:2])
        step = limits[3].item() if len(limits) > 3 else 1
        return step == 1 and max(start, 0) == 0 and min(end, templates + 1) == templates
    if node.op == "Split":
        sizes = known.integers(node.inputs[1]) if len(node.inputs) > 1 else None
        unused = not any(t.outputs or t.name in outputs for t in node.outputs[1:])
        return (_on_channels(node, rank, 0) and sizes is not None and sizes.size > 1
                and int(sizes.flat[0]) == templates and unused)
    if node.op == "Gather":
        indices = known.integers(node.inputs[1])
        return (_on_channels(node, rank, 0) and indices is not None and indices.ndim == 1
                and np.array_equal(indices, np.arange(templates)))
    return False


def _value_conv(p: gs.Variable, templates: int, outputs: set) -> gs.Node | None:
    """The conv that is p's only consumer, if its weights are constants: the forms that change it need that."""
    users = p.outputs
    conv = users[0] if len(users) == 1 and p.name not in outputs else None
    if conv is None or conv.op != "Conv" or conv.inputs[0] is not p or not _constant_weights(conv):
        return None
    return conv if constant_values(conv.inputs[1]).shape[1] == templates else None


def _match(softmax: gs.Node, ranks: dict[str, int], known: _FixedBatch, outputs: set) -> TemplateBlock | None:
    rank = ranks[softmax.inputs[0].name]
    logits, after = _unscaled(softmax.inputs[0], rank)
    parts = _logit_parts(logits, rank, known)
    users = softmax.outputs[0].outputs
    if parts is None or len(users) != 1 or softmax.outputs[0].name in outputs:
        return None
    conv, templates, before, null = parts
    if not _keeps_first(users[0], rank, templates, known, outputs):
        return None
    p = users[0].outputs[0]
    return TemplateBlock(softmax, conv, templates, before * after, null * after, p, _value_conv(p, templates, outputs), rank)
