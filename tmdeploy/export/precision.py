"""Lower an exported FP32 graph to FP16 or INT8 inside the graph itself.

TensorRT 11 builds strongly typed networks (no FP16/INT8 builder flags), so the precision a runtime uses
is the precision the ONNX file spells out: FP16 tensors with Cast nodes at the edges, or INT8 as
QuantizeLinear/DequantizeLinear pairs. Both conversions go through maintained tools (onnxconverter-common,
onnxruntime.quantization); this module chooses what stays in float and checks the result.

FP16: what stays FP32, measured. Models: rn26-tm, rn26-cls, rn26-sge, rn26-rescnet trained 3–4 epochs on
digits (8×8; rn26-cls 16×16). Arithmetic: ``onnx.reference.ReferenceEvaluator`` on the FP16 graph, which
rounds every op's output to FP16 and accumulates in FP32 as GPU kernels do. (ONNX Runtime's CPU provider
cannot measure this: it runs FP16 Conv, Exp, ReduceSum... through FP32 kernels, so it sees only the
rounding of the weights.) Keeping the candidate op types in FP32 — the soft-max's ReduceMax/Max/Exp/
ReduceSum/Div, SGE's ReduceMean/Sqrt/Sigmoid, ResCNet's Exp/Div/Erf — changed nothing that matters:
top-1 agreement with FP32 stayed 100% on every model, and the largest logit error stayed at FP16 rounding
level (rn26-tm 0.0074 with or without; rn26-cls 0.13 → 0.095; rn26-sge 0.016 → 0.015; rn26-rescnet, logits
up to 397, 0.39 → 0.25–0.39), while each kept op type adds Casts (rn26-tm: 18 → 90) that break TensorRT's
fusions. The error comes from the FP16 convolutions; the deferred soft-max subtracts the maximum before
Exp, so e ≤ 1 and Σe ≤ K + 1. So no op type is kept by default. The FP16 risk these blocks do carry is
range (65504 is FP16's largest value): SGE's products on its variance path reached 3.0e3 and ResCNet's
exp(½·logvar) 24 on these models. That is measured per model: given calibration inputs, every node that reads or writes
a value beyond ``FP16_RANGE_LIMIT`` stays FP32 (on digits rn26-sge, its variance path: 26 nodes), so no
such tensor is stored in FP16. ``keep_fp32`` names more op types or nodes.

INT8: every convolution's input, weights and output are quantized; the soft-max's exponent and normaliser
are float ops on dequantized values. Leaving the score conv's output in float as well (so that Exp's
argument is never rounded to 8 bits) did not change rn26-tm's agreement (98.9% either way, 4-epoch model)
and made the ONNX Runtime recipe 1.6× slower (its QLinearConv needs a quantized output).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from tmdeploy import data
from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.export.channels_last import channels_last_float_ops
from tmdeploy.export.int8_recipes import INT8_RECIPES, Int8Recipe, int8_description  # noqa: F401 (re-exported)
from tmdeploy.export.graph import onnx_opset
from tmdeploy.export.metadata import ModelMetadata, write
from tmdeploy.export.options import INT8_TARGETS, ExportOptions  # noqa: F401 (INT8_TARGETS: tests use it here)

# ModelOpt AutoCast's default ``data_max``: 128× headroom under FP16's 65504 for inputs the
# calibration set did not show.
FP16_RANGE_LIMIT = 512.0
# The soft-max's exponent and normaliser, in every TM export form; INT8 never quantizes these.
SOFTMAX_OPS = ("ReduceMax", "Max", "Exp", "ReduceSum", "Div", "Softmax")
_GLUE_OPS = ("Add", "Sub", "Mul")
# INT8 quantizes the convolutions, which carry the arithmetic. The Gemms here act on pooled vectors (the
# classifier, ResCNet's statistics): next to no arithmetic, and quantizing them cut digits-trained
# rn26-rescnet's top-1 agreement with FP32 from 99% to 76%. Quantizing the residual Adds as well
# (QLinearAdd on ONNX Runtime) moved rn26-tm's and rn26-cls's agreement by at most one test image in 360.
INT8_OP_TYPES = ("Conv",)
# With unsigned activations the quantizer drops each Relu after a convolution and gives the convolution the
# Relu's output scale (zero point 0, so QuantizeLinear's clamp is the Relu): onnxruntime then runs Conv+Relu
# as one QLinearConv. Left out, every Conv+Relu kept a DequantizeLinear → QuantizeLinear requantization
# between the two scales: rn26 at 1×32×32, batch 32, 1 thread went from 2.51× to 2.83× FP32's speed with it.
# Symmetric signed activations keep their Relus (the quantizer's rule), so TensorRT's recipe leaves them alone.
_UNSIGNED_OP_TYPES = (*INT8_OP_TYPES, "Relu")
_BATCH = 32  # calibration and range-measurement batch


def to_fp16(model: onnx.ModelProto, keep_fp32: Sequence[str] = (),
            calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """FP16 weights and compute with FP32 inputs and outputs.

    Kept in FP32: onnxconverter-common's default block list (Max, Min, Resize, TopK, the ai.onnx.ml ops...),
    ``keep_fp32`` (op types or node names), and with ``calibration`` (a batch in the
    graph's input format) every node that reads or writes values beyond ``FP16_RANGE_LIMIT`` on it.
    """
    from onnxconverter_common import float16

    if float16.check_if_fp16_ready(model.graph):
        raise UsageError("the model already holds FP16 casts or weights; lower an FP32 export")
    op_types, node_names = _split_keep_list(model, keep_fp32)
    if calibration is not None:
        node_names += large_value_nodes(model, calibration)
    op_types = {*float16.DEFAULT_OP_BLOCK_LIST, *op_types}
    blocked = {n.name for n in model.graph.node if n.op_type in op_types or n.name in node_names}
    with warnings.catch_warnings():  # one line per distinct weight below 1e-7 that FP16 rounds up to 1e-7
        warnings.filterwarnings("ignore", message="the float32 number", module="onnxconverter_common")
        converted = float16.convert_float_to_float16(
            _converter_ready(model, blocked), keep_io_types=True, op_block_list=sorted(op_types),
            node_block_list=sorted(blocked), check_fp16_ready=False,  # checked above, before _converter_ready's casts
        )
    return _checked(_fp32_outputs_restored(converted, model), model, "fp16")


def large_value_nodes(model: onnx.ModelProto, calibration: np.ndarray,
                      limit: float = FP16_RANGE_LIMIT) -> list[str]:
    """Nodes with a float input or output whose magnitude exceeds ``limit`` on ``calibration``."""
    import onnxruntime as ort
    from polygraphy import constants
    from polygraphy.backend.onnx import ModifyOutputs

    marked = ModifyOutputs(model, outputs=constants.MARK_ALL, copy=True)()
    session = ort.InferenceSession(marked.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    peak: dict[str, float] = {}
    for batch in _batches(calibration):
        for name, value in zip(names, session.run(names, {model.graph.input[0].name: batch})):
            if value.dtype.kind == "f":
                peak[name] = max(peak.get(name, 0.0), float(np.abs(value).max(initial=0.0)))
    large = {name for name, value in peak.items() if not value <= limit}  # NaN/Inf count as large
    # A node without float outputs (Shape) stores nothing in FP16 and stays as it is.
    return [n.name for n in model.graph.node if peak.keys() & {*n.output} and large & {*n.input, *n.output}]


def _converter_ready(model: onnx.ModelProto, blocked: set[str]) -> onnx.ModelProto:
    """A copy with two gaps of onnxconverter-common 1.16 closed before it runs.

    It keeps a float initializer that feeds both an FP32-kept node and an FP16 node in FP32 and feeds it
    uncast to the FP16 node, a type error (the TM null logit μ feeds the always-kept ``Max`` and an FP16
    ``Sub``): those FP16 consumers get their own copy, which the converter converts. And it marks the
    output of ``Cast(to=FLOAT)`` FP16 without changing ``to`` (the uint8 input of a baked-preprocessing
    graph): such casts now cast to FP16 directly.
    """
    model = _copy(model)
    floats = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in set(node.input) & floats.keys():
            consumers.setdefault(name, []).append(node)
        if node.op_type == "Cast" and node.name not in blocked:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16
    for name, nodes in consumers.items():
        fp16_nodes = [n for n in nodes if n.name not in blocked]
        if 0 < len(fp16_nodes) < len(nodes):
            duplicate = model.graph.initializer.add()
            duplicate.CopyFrom(floats[name])
            duplicate.name = f"{name}__fp16"
            for node in fp16_nodes:
                node.input[:] = [duplicate.name if i == name else i for i in node.input]
    return model


def _fp32_outputs_restored(converted: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Undo onnxconverter-common 1.16's cast of an FP32-kept node's graph output to FP16 (despite
    ``keep_io_types``): the graph output takes the node's FP32 value, and FP16 readers inside keep the cast."""
    fp32 = {v.name for v in original.graph.output if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    producers = {o: n for n in converted.graph.node for o in n.output}
    for output in converted.graph.output:
        cast, fp16_name = producers.get(output.name), f"{output.name}__fp16"
        if output.name not in fp32 or output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 \
                or cast is None or cast.op_type != "Cast":
            continue  # anything else is left for _checked to report
        source = cast.input[0]
        for node in converted.graph.node:
            node.input[:] = [fp16_name if i == output.name else output.name if i == source else i for i in node.input]
            node.output[:] = [output.name if o == source else o for o in node.output]
        cast.output[:] = [fp16_name]
        if not any(fp16_name in n.input for n in converted.graph.node):
            converted.graph.node.remove(cast)
        stale = [v for v in converted.graph.value_info if v.name in (output.name, source)]
        for v in stale:
            converted.graph.value_info.remove(v)
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return converted


def softmax_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes computing a soft-max's exponent and normaliser.

    The soft-max op types, and the Add/Sub/Mul glue whose every computed input comes from one of them
    (``Σe + exp(μ − m)``, ``μ − m``); a residual Add that also takes a convolution's output is not one.
    """
    produced_by = {out: node for node in model.graph.node for out in node.output}
    found: set[str] = set()
    for node in model.graph.node:  # topological order: producers are classified first
        computed = [produced_by[i] for i in node.input if i in produced_by]
        if node.op_type in SOFTMAX_OPS or (
            node.op_type in _GLUE_OPS and computed and all(p.name in found for p in computed)
        ):
            found.add(node.name)
    return sorted(found)


def residual_add_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the Adds that join two computed tensors outside a soft-max: the residual joins.

    An Add with a constant input (the RMS norm's ``+ ε``, a bias) or inside a soft-max is not one;
    quantizing those would put a per-pixel statistic or an exponent through 8 bits.
    """
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    in_softmax = set(softmax_nodes(model))
    return {n.name for n in model.graph.node if n.op_type == "Add" and n.name not in in_softmax
            and not any(i in constants for i in n.input)}


def to_int8(model: onnx.ModelProto, calibration: np.ndarray, target: str = "tensorrt",
            show_progress: bool = True, recipe: Int8Recipe | None = None) -> onnx.ModelProto:
    """Static QDQ quantization calibrated (min/max) on ``calibration``, a batch in the graph's input format.

    ``tensorrt``: symmetric signed INT8 activations and per-channel weights (zero points 0), biases left in
    float because TensorRT's parser has no INT32 DequantizeLinear. ``onnxruntime``: unsigned activations,
    signed 7-bit per-channel weights (exact on CPUs without VNNI too; ``onnxruntime-vnni``: 8-bit) and INT32
    biases, which ONNX Runtime's x86 kernels fuse into QLinearConv
    (symmetric signed activations ran slower than FP32 there: docs/models.md, "INT8"). Soft-max exponents and
    normalisers stay in float for both. ``recipe`` (one of ``INT8_RECIPES``) overrides ``target``'s.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    ExportOptions(precision="int8", int8_target=target).validate()
    if len(calibration) == 0:
        raise UsageError("INT8 calibration needs at least one image")
    recipe = recipe or INT8_RECIPES[target]
    activations = QuantType.QInt8 if recipe.signed_activations else QuantType.QUInt8
    extra = {"ActivationSymmetric": recipe.signed_activations, "WeightSymmetric": True,
             "QuantizeBias": recipe.quantize_bias}
    op_types = INT8_OP_TYPES if recipe.signed_activations else _UNSIGNED_OP_TYPES
    excluded = softmax_nodes(model) + ([] if recipe.value_convs else value_conv_nodes(model))
    if recipe.shortcuts:
        op_types, residual = (*op_types, "Add"), residual_add_nodes(model)
        excluded += [n.name for n in model.graph.node if n.op_type == "Add" and n.name not in residual]
    with tempfile.TemporaryDirectory(prefix="tmdeploy-int8-") as tmp:
        source, quantized = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source))
        with _CalibrationReader(model.graph.input[0].name, calibration, show_progress) as reader:
            quantize_static(
                str(source), str(quantized), reader,
                quant_format=QuantFormat.QOperator if recipe.qoperator else QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=excluded, per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                activation_type=activations, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, extra_options=extra,
            )
        lowered = onnx.load(str(quantized))
    if recipe.channels_last_float_ops:
        lowered = channels_last_float_ops(lowered)
    return _checked(lowered, model, "int8")


def value_conv_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the template-matching value convolutions (ν), from the module path each node records."""
    from tmdeploy.export.graph import MODULE_KEY

    def module(node) -> str:
        return next((p.value for p in node.metadata_props if p.key == MODULE_KEY), "")

    return [n.name for n in model.graph.node if n.op_type == "Conv" and module(n).endswith(".values")]


class _CalibrationReader:
    """Feeds the calibration images in batches, with a progress bar over the batches."""

    def __init__(self, input_name: str, images: np.ndarray, show_progress: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.input_name = input_name
        self.batches = iter(_batches(images))
        self.progress = Progress(TextColumn("INT8 calibration"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), disable=not show_progress)
        self.task = self.progress.add_task("calibration", total=-(-len(images) // _BATCH))

    def __enter__(self) -> "_CalibrationReader":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.progress.advance(self.task)
        return {self.input_name: batch}


def _batches(images: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(images[i:i + _BATCH]) for i in range(0, len(images), _BATCH)]


def calibration_inputs(meta: ModelMetadata, data_spec: str, count: int = 256, seed: int = 0) -> np.ndarray:
    """``count`` images from the TRAIN split of ``data_spec`` in the graph's input format."""
    if count < 1:
        raise UsageError(f"calibration needs at least one image, got count={count}")
    c, h, _ = meta.input_size
    images, _ = data.stack(data.load(data_spec, image_size=h, in_chans=c, seed=seed).train, limit=count)
    return meta.graph_input(images.numpy(), raw=True)


def calibration_loader(data_spec: str):
    """``meta`` → ``data_spec``'s calibration images in that graph's input format, loaded once per format:
    callers that lower several graphs (FP16 and each INT8 recipe, per form) load the images once."""
    loaded: dict[tuple, np.ndarray] = {}

    def calibration(meta: ModelMetadata) -> np.ndarray:
        if meta.input_format() not in loaded:
            loaded[meta.input_format()] = calibration_inputs(meta, data_spec)
        return loaded[meta.input_format()]

    return calibration


def lower_precision(model: onnx.ModelProto, precision: str, *, meta: ModelMetadata, calib_data: str | None = None,
                    int8_target: str = "tensorrt", keep_fp32: Sequence[str] = (),
                    show_progress: bool = True, int8_recipe: Int8Recipe | None = None,
                    calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """Dispatch on ``precision``; ``fp32`` returns ``model`` unchanged. Both lower precisions measure the
    model on ``calib_data``'s training images: INT8 for its scales, FP16 for its value ranges. The lowered
    graph carries ``meta`` with its own precision (TensorRT 10 takes its builder flags from it).

    ``calibration``: those images as :func:`calibration_inputs` gives them, for a caller that lowers one
    graph many times (optimize) and so loads them once; ``calib_data`` is then not read."""
    ExportOptions(precision=precision, int8_target=int8_target, keep_fp32=tuple(keep_fp32)).validate()
    if precision == "fp32":
        return model
    if calibration is None:
        if calib_data is None:
            raise UsageError(f"--precision {precision} needs calibration data (--calib-data)")
        calibration = calibration_inputs(meta, calib_data)
    if precision == "fp16":
        lowered = to_fp16(model, keep_fp32, calibration)
    else:
        lowered = to_int8(model, calibration, int8_target, show_progress, int8_recipe)
    # the opset the file holds: onnxruntime's INT8 recipes raise it to 23 for RMSNormalization
    meta = replace(meta, precision=precision, opset=onnx_opset(lowered))
    if precision == "int8":
        meta = replace(meta, **int8_description(lowered, int8_target, int8_recipe))
    write(lowered, meta)
    return lowered


def _split_keep_list(model: onnx.ModelProto, keep: Sequence[str]) -> tuple[list[str], list[str]]:
    """Sort ``keep`` into op types and node names; a name that is neither is a usage error."""
    node_names = {node.name for node in model.graph.node}
    op_types, names = [], []
    for item in keep:
        if item in node_names:
            names.append(item)
        elif onnx.defs.has(item):
            op_types.append(item)
        else:
            raise UsageError(f"--keep-fp32 '{item}' is neither an ONNX op type nor a node of this graph")
    return op_types, names


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _checked(lowered: onnx.ModelProto, original: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """Full ONNX check, the interface the caller relies on (same I/O names and element types), and the
    original's metadata."""
    try:
        onnx.checker.check_model(lowered, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise TmdeployError(f"the {precision} graph fails the ONNX checker: {first_line(err)}") from err
    for kind in ("input", "output"):
        before = [(v.name, v.type.tensor_type.elem_type) for v in getattr(original.graph, kind)]
        after = [(v.name, v.type.tensor_type.elem_type) for v in getattr(lowered.graph, kind)]
        if before != after:
            raise TmdeployError(f"the {precision} conversion changed the graph {kind}s: {before} -> {after}")
    del lowered.metadata_props[:]
    lowered.metadata_props.extend(original.metadata_props)
    return lowered
