"""The named INT8 recipes: settings of onnxruntime.quantization's knobs, and what a file made with one says about
itself. Torch-free, so option modules list the names from this one table."""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx

from tmdeploy.export import int8_saturation


@dataclass(frozen=True)
class Int8Recipe:
    """One setting of onnxruntime.quantization's knobs; the named ones are what ``benchmarks/int8_recipes.py``
    compares and ``tmdeploy optimize`` tries, since the fastest one depends on the CPU's INT8 kernels."""

    signed_activations: bool  # symmetric QInt8 (TensorRT's requirement) or asymmetric QUInt8 (ORT's x86 kernels)
    per_channel: bool = True  # weight scales per output channel, or one per tensor
    qoperator: bool = False  # QLinearConv nodes in the file, or QDQ pairs that onnxruntime fuses when loading
    reduce_range: bool = False  # 7-bit weights: u8s8 pair sums fit AVX2's 16 bits (exact without VNNI)
    quantize_bias: bool = True  # INT32 biases; TensorRT's parser has no INT32 DequantizeLinear
    shortcuts: bool = False  # the residual Adds too (QLinearAdd), not only the convolutions
    value_convs: bool = True  # the template-matching blocks' value convolutions (ν), or leave them in float
    # tmdeploy.export.channels_last's exact rewrites of the float ops between onnxruntime's channels-last
    # integer kernels (one RMSNormalization per RMS norm, opset 23; no soft-max max shift where 8 bits bound it)
    channels_last_float_ops: bool = True


# The onnxruntime target's recipe has 7-bit weights: its pair sums fit AVX2's 16 bits, so the file computes
# exactly on any x86 CPU, whichever exported it (tmdeploy.export.int8_saturation). Its variants change one
# knob each; ``onnxruntime-vnni`` keeps 8-bit weights for CPUs with VNNI or AMX, and its metadata says so.
_ONNXRUNTIME = Int8Recipe(signed_activations=False, reduce_range=True)
INT8_RECIPES = {
    "tensorrt": Int8Recipe(signed_activations=True, quantize_bias=False, channels_last_float_ops=False),
    "onnxruntime": _ONNXRUNTIME,
    "onnxruntime-vnni": replace(_ONNXRUNTIME, reduce_range=False),
    "ort-per-tensor": replace(_ONNXRUNTIME, per_channel=False),
    "ort-qoperator": replace(_ONNXRUNTIME, qoperator=True),
    "ort-shortcuts": replace(_ONNXRUNTIME, shortcuts=True),
    "ort-float-values": replace(_ONNXRUNTIME, value_convs=False),
    "ort-plain-float": replace(_ONNXRUNTIME, channels_last_float_ops=False),
}


def int8_description(lowered: onnx.ModelProto, target: str, recipe: Int8Recipe | None) -> dict[str, str]:
    """The metadata an INT8 file carries about itself: its recipe's name, and where its integer arithmetic is
    exact, read off its weights (so it holds whichever CPU exported it)."""
    name = target if recipe is None else next((n for n, r in INT8_RECIPES.items() if r == recipe), "custom")
    exact_on = int8_saturation.safe_on(lowered)
    if name == "tensorrt":
        exact_on = f"TensorRT; onnxruntime on {exact_on}"
    return {"int8_recipe": name, "int8_safe_on": exact_on}
