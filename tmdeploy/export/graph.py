"""Graph passes after ``torch.onnx.export``: BatchNorm folding, clean-up, module scopes and full checks."""

from __future__ import annotations

import ast
import math
from functools import lru_cache

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from tmdeploy.errors import TmdeployError, first_line

MODULE_KEY = "tmdeploy.module"  # node metadata: the PyTorch module path the node was exported from


def dynamo_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name → PyTorch module path, from the dynamo exporter's name scopes (lost in later passes otherwise)."""
    scopes = {}
    for node in model.graph.node:
        raw = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if node.name and raw:
            try:
                names = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                continue
            if len(names) >= 2 and names[-2]:
                scopes[node.name] = names[-2]
    return scopes


def torchscript_scopes(model: onnx.ModelProto, module_names: list[str]) -> dict[str, str]:
    """Node name → PyTorch module path, from the TorchScript exporter's node names.

    It names a node ``/model/stages.0/stages.0.0/branch/Conv``: one part per module call, each the end of
    that module's path (a container's children carry the container's name too). The path is rebuilt by
    taking, below the module found so far, the nearest module whose path ends with the next part.
    """
    names = tuple(module_names)

    @lru_cache(maxsize=None)
    def child(parent: str, part: str) -> str | None:
        below = [n for n in names if n.startswith(parent + ".")] if parent else names
        found = [n for n in below if n == part or n.endswith("." + part)]
        return min(found, key=len) if found else None

    scopes = {}
    for node in model.graph.node:
        path = ""
        for part in node.name.split("/")[1:-1]:
            path = child(path, part) or path
        if path:
            scopes[node.name] = path
    return scopes


def attach_module_scopes(model: onnx.ModelProto, scopes: dict[str, str]) -> None:
    """Keep one short key per node so ``tmdeploy check --localize`` can map tensors back to modules."""
    for node in model.graph.node:
        del node.metadata_props[:]
        if node.name in scopes:
            entry = node.metadata_props.add()
            entry.key, entry.value = MODULE_KEY, scopes[node.name]


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold inference BatchNorm into the preceding Conv/Gemm (onnxscript's maintained rewrite rules).

    The TorchScript exporter folds Conv → BatchNorm itself, so a graph without BatchNormalization skips
    the (slow to import) rewriter.
    """
    if not any(node.op_type == "BatchNormalization" for node in model.graph.node):
        return model
    import onnx_ir as ir
    from onnxscript import rewriter
    from onnxscript.rewriter.rules.common import fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_gemm_rule

    rules = [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_gemm_rule]
    return ir.serde.serialize_model(rewriter.rewrite(ir.serde.deserialize_model(model), pattern_rewrite_rules=rules))


def batchnorm_to_affine(graph: gs.Graph) -> int:
    """Lower each BatchNormalization that had no Conv to fold into (pre-activation BN) to Mul + Add.

    Such a BN follows a Concat or an Add, so no convolution can absorb it; in inference it is a fixed
    per-channel affine map, and Mul/Add keep the graph free of batch-statistics operators. Written by
    hand because it is five lines on graphsurgeon and no maintained pass does exactly this.
    """
    count = 0
    for node in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        x = node.inputs[0]
        scale, bias, mean, var = (np.asarray(t.values, dtype=np.float64) for t in node.inputs[1:5])
        eps = float(node.attrs.get("epsilon", 1e-5))
        mul = scale / np.sqrt(var + eps)
        add = bias - mean * mul
        shape = (1, -1, 1, 1) if (x.shape is None or len(x.shape) == 4) else (1, -1)
        mul_c = gs.Constant(f"{node.name}_scale", mul.astype(np.float32).reshape(shape))
        add_c = gs.Constant(f"{node.name}_shift", add.astype(np.float32).reshape(shape))
        scaled = gs.Variable(f"{node.name}_scaled", dtype=np.float32)
        out = node.outputs[0]
        node.outputs.clear()
        graph.nodes.append(gs.Node("Mul", f"{node.name}_mul", inputs=[x, mul_c], outputs=[scaled]))
        graph.nodes.append(gs.Node("Add", f"{node.name}_add", inputs=[scaled, add_c], outputs=[out]))
        count += 1
    return count


def clean_up(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-node removal and topological order with onnx-graphsurgeon."""
    graph = gs.import_onnx(model)
    graph.fold_constants()  # first: the TorchScript exporter feeds equal initializers through Identity nodes
    batchnorm_to_affine(graph)
    graph.fold_constants().cleanup().toposort()
    return export_like(graph, model)


def export_like(graph: gs.Graph, model: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` as a ModelProto with ``model``'s IR version, producer and opsets (graphsurgeon writes its own)."""
    exported = gs.export_onnx(graph)
    exported.ir_version = model.ir_version
    exported.producer_name, exported.producer_version = model.producer_name, model.producer_version
    del exported.opset_import[:]
    exported.opset_import.extend(model.opset_import)
    return exported


def onnx_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the graph imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` with full checks, then strict shape inference; returns the inferred model."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise TmdeployError(f"exported graph failed onnx.checker: {first_line(err, 200)}") from err


def check_finite_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """Refuse a graph holding NaN or Inf in a float initializer or constant, naming it.

    The checkpoint's weights are checked before the export; this checks what the graph really holds
    after BatchNorm folding, constant folding and lowering to FP16, where finite inputs can still give
    Inf (a variance near zero, a product beyond the type's range).
    """
    constants = [*model.graph.initializer,
                 *(a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t"))]
    for tensor in constants:
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        values = onnx.numpy_helper.to_array(tensor)
        if not np.isfinite(values.astype(np.float64)).all():
            raise TmdeployError(f"the exported graph would hold NaN or Inf in '{tensor.name[:100]}' "
                                f"({onnx.TensorProto.DataType.Name(tensor.data_type)}): the checkpoint's values "
                                f"overflow the graph's float type; refusing to write it")
    return model


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def parameter_count(model: onnx.ModelProto) -> int:
    """Exact, in Python ints: numpy's int64 wrapped a declared [2**40, 2**40] around to a small count."""
    for t in model.graph.initializer:
        if any(d < 0 for d in t.dims):
            raise TmdeployError(f"initializer '{t.name[:100]}' declares a negative dimension {list(t.dims)}")
    return sum(math.prod(t.dims) for t in model.graph.initializer)
