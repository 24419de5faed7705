"""Rewrites of the float ops an onnxruntime INT8 graph keeps between its integer kernels.

onnxruntime runs QLinearConv channels-last (NHWC) and moves the float ops between two of them into that
layout too, where the template-matching blocks' per-pixel statistics are slow: a value per pixel broadcast
over a span of C channels, op by op (``benchmarks/int8_profile.py``). Two exact rewrites cut that time; on
rn26-tm at 1×32×32, batch 32, 1 thread they took INT8 from 1.9× to 2.4× FP32's speed
(``benchmarks/int8_recipes.py``, recipe ``ort-plain-float`` against ``onnxruntime``):

* **RMS norm as one op.** ``x / sqrt(mean_c(x²) + ε)`` becomes ``Transpose → RMSNormalization(axis=-1) →
  Transpose`` (ONNX opset 23): one kernel over each pixel's channels instead of five ops. The Transposes
  cancel against the ones onnxruntime puts around its channels-last convolutions, so none of them runs.
  Hand-written spellings (``x * rsqrt(…)``, ``x.pow(2)``, ``dim=-3``) are the same norm and are taken too.
* **No max shift where 8 bits bound the scores.** A soft-max subtracts ``m = max(max_k s_k, μ)`` only so
  that ``exp`` cannot overflow. When the scores come out of a DequantizeLinear, the clamp of their 8-bit
  type bounds them; if ``exp`` of that bound, summed over the K templates, stays finite, ``exp(μ)`` is a
  normal float, and the exponentials are used only as ``e / (Σe + e^μ)`` (the ``normalized`` form, not
  ``deferred``), the shift cancels exactly and the ReduceMax, Max and two Subs go.

Written on onnx-graphsurgeon by hand: these match tmdeploy's own export patterns, which no maintained
fusion (onnxruntime's transformers target LLM subgraphs) looks for.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from tmdeploy.export.graph import export_like, onnx_opset

RMS_NORM_OPSET = 23  # ONNX's RMSNormalization
# exp's float32 overflow is at 88.7; the shift goes only where max score + log(K + 1) stays under this
# and exp(μ) stays a normal float (so the denominator Σe + exp(μ) is never 0)
_EXP_LIMIT = 80.0
_INT8_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def channels_last_float_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a quantized graph) with both rewrites applied where their patterns and bounds hold."""
    if fuse_rms_norms(_graph(model)):  # RMSNormalization needs opset 23: convert first (it has no adapter)
        converted = version_converter.convert_version(model, max(RMS_NORM_OPSET, onnx_opset(model)))
        converted.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(converted.opset_import))
        model = converted
    graph = _graph(model)
    if not fuse_rms_norms(graph) + drop_softmax_shifts(graph):
        return model
    graph.cleanup().toposort()
    return export_like(graph, model)


def _graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(onnx.shape_inference.infer_shapes(model))  # the rewrites need the channel counts


def _producer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    return node if node is not None and node.op == op else None


def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    """An initializer's value, or a Constant node's (onnx's version converter writes ReduceMean's axes so)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = _producer(tensor, "Constant")
    value = node and node.attrs.get("value")
    return np.asarray(value.values) if isinstance(value, gs.Constant) else None


def _channel_axis_only(reduce: gs.Node) -> bool:
    """Axes [1] or [-3], keepdims: over the channels of the 4-D tensors both rewrites take."""
    axes = _constant(reduce.inputs[1]) if len(reduce.inputs) > 1 else reduce.attrs.get("axes")
    return axes is not None and list(np.ravel(axes)) in ([1], [-3]) and reduce.attrs.get("keepdims", 1) == 1


def _divided(node: gs.Node) -> tuple[gs.Tensor, gs.Tensor] | None:
    """(x, r) if ``node`` is ``x / r``: ``Div(x, r)``, or ``x`` times ``Reciprocal(r)`` or ``Div(1, r)``
    (how the exporters write ``x * torch.rsqrt(…)``)."""
    if node.op == "Div":
        return node.inputs[0], node.inputs[1]
    for x, inverse in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])) if node.op == "Mul" else ():
        reciprocal, quotient = _producer(inverse, "Reciprocal"), _producer(inverse, "Div")
        one = quotient and _constant(quotient.inputs[0])
        if reciprocal or (one is not None and one.size == 1 and one.item() == 1):
            return x, (reciprocal or quotient).inputs[-1]
    return None


def _squares(tensor: gs.Tensor, x: gs.Tensor) -> bool:
    """Whether ``tensor`` is ``x * x`` or ``x ** 2``."""
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if node is None or node.op not in ("Mul", "Pow"):
        return False
    if node.op == "Mul":
        return list(node.inputs) == [x, x]
    exponent = _constant(node.inputs[1])
    return node.inputs[0] is x and exponent is not None and exponent.size == 1 and exponent.item() == 2


def _rms_epsilon(x: gs.Tensor, root: gs.Tensor) -> float | None:
    """ε if ``root`` is ``sqrt(mean_c(x²) + ε)`` (the sum in either order), else None."""
    sqrt = _producer(root, "Sqrt")
    add = sqrt and _producer(sqrt.inputs[0], "Add")
    for mean, eps in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])) if add else ():
        reduce, eps = _producer(mean, "ReduceMean"), _constant(eps)
        if reduce and eps is not None and eps.size == 1 and _squares(reduce.inputs[0], x) and _channel_axis_only(reduce):
            return float(eps.item())
    return None


def fuse_rms_norms(graph: gs.Graph) -> int:
    """``x / sqrt(mean_c(x²) + ε)`` on a 4-D ``x`` → channels-last RMSNormalization; returns how many were
    rewritten. The spellings of ``_divided`` and ``_squares``, the channel axis as 1 or -3."""
    count = 0
    for node in [n for n in graph.nodes if n.op in ("Div", "Mul")]:
        x, root = _divided(node) or (None, None)
        eps = _rms_epsilon(x, root) if x is not None else None
        if eps is None or x.shape is None or len(x.shape) != 4 or not isinstance(x.shape[1], int):
            continue
        name, out = node.name, node.outputs[0]
        node.outputs.clear()
        nhwc = gs.Variable(f"{name}_nhwc", dtype=np.float32)
        normed = gs.Variable(f"{name}_rms_nhwc", dtype=np.float32)
        scale = gs.Constant(f"{name}_rms_scale", np.ones(x.shape[1], np.float32))
        graph.nodes += [
            gs.Node("Transpose", f"{name}_to_nhwc", {"perm": [0, 2, 3, 1]}, [x], [nhwc]),
            gs.Node("RMSNormalization", f"{name}_rms", {"axis": -1, "epsilon": eps}, [nhwc, scale], [normed]),
            gs.Node("Transpose", f"{name}_to_nchw", {"perm": [0, 3, 1, 2]}, [normed], [out]),
        ]
        count += 1
    return count


def _score_bound(dequantize: gs.Node) -> float | None:
    """The largest value a DequantizeLinear with per-tensor constant scale and zero point can give."""
    scale, zero = (_constant(t) for t in dequantize.inputs[1:3]) if len(dequantize.inputs) == 3 else (None, None)
    if scale is None or zero is None or scale.size != 1 or zero.dtype not in _INT8_RANGES:
        return None
    low, high = _INT8_RANGES[zero.dtype]
    return float(max(scale.item() * (high - zero.item()), scale.item() * (low - zero.item())))


def drop_softmax_shifts(graph: gs.Graph) -> int:
    """``Exp(s − Max(ReduceMax(s, axes=[1]), μ))`` and ``Exp(μ − that max)`` → ``Exp(s)`` and ``exp(μ)``
    where ``s`` is dequantized 8-bit scores whose bound keeps every exponential finite; returns how many."""
    count = 0
    for peak in [n for n in graph.nodes if n.op == "ReduceMax"]:
        scores = peak.inputs[0]
        dequantize = _producer(scores, "DequantizeLinear")
        users = peak.outputs[0].outputs
        joint = users[0] if len(users) == 1 and users[0].op == "Max" else None
        null = joint and _constant(next(t for t in joint.inputs if t is not peak.outputs[0]))
        bound = dequantize and _score_bound(dequantize)
        templates = scores.shape[1] if scores.shape is not None and len(scores.shape) == 4 else None
        if not (joint and null is not None and null.size == 1 and bound is not None and _channel_axis_only(peak)
                and isinstance(templates, int)):
            continue
        mu = float(null.item())
        if max(bound, mu) + math.log(templates + 1) > _EXP_LIMIT or mu < -_EXP_LIMIT:
            continue
        subs = list(joint.outputs[0].outputs)
        if not all(s.op == "Sub" and s.inputs[1] is joint.outputs[0] for s in subs) or not _only_normalized(
                subs, scores, graph):
            continue
        for sub in subs:
            constant = _constant(sub.inputs[0])  # μ − m: its Exp is the constant exp(μ) now
            exps = [n for n in sub.outputs[0].outputs if n.op == "Exp"] if constant is not None else []
            _bypass(sub, sub.inputs[0])
            for exp in exps:
                _bypass(exp, gs.Constant(f"{exp.name}_exp_null", np.exp(constant).astype(np.float32)))
        count += 1
    return count


def _only_normalized(subs: list[gs.Node], scores: gs.Tensor, graph: gs.Graph) -> bool:
    """Whether the shifted exponentials are used only as ``e / (Σe + e_null)``, which the shift cancels out of.

    In the ``deferred`` form ``e`` itself feeds the value convolution, through a QuantizeLinear whose scale
    was calibrated for ``e ≤ 1``: without the shift that input would saturate, so such a soft-max keeps it.
    """
    by_input = {("scores" if sub.inputs[0] is scores else "null"): sub for sub in subs}
    if len(subs) != 2 or set(by_input) != {"scores", "null"} or _constant(by_input["null"].inputs[0]) is None:
        return False
    exps = [[n for n in by_input[k].outputs[0].outputs] for k in ("scores", "null")]
    if any(len(users) != 1 or users[0].op != "Exp" for users in exps):
        return False
    e, e_null = (users[0].outputs[0] for users in exps)
    sums = [n for n in e.outputs if n.op == "ReduceSum"]
    if e in graph.outputs or len(sums) != 1:
        return False
    for user in e.outputs:
        if user is sums[0]:
            continue
        denominator = _producer(user.inputs[1], "Add") if user.op == "Div" and user.inputs[0] is e else None
        if denominator is None or {id(t) for t in denominator.inputs} != {id(sums[0].outputs[0]), id(e_null)}:
            return False
    return True


def _bypass(node: gs.Node, replacement: gs.Tensor) -> None:
    """Feed ``replacement`` to every consumer of ``node``'s output and detach ``node`` (cleanup drops it)."""
    out = node.outputs[0]
    for user in list(out.outputs):
        user.inputs[user.inputs.index(out)] = replacement
    node.outputs.clear()
