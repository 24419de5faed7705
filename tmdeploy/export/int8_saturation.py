"""Whether an INT8 file can saturate onnxruntime's integer kernels on an x86 CPU without VNNI or AMX.

Without VNNI, onnxruntime's u8s8 convolutions multiply 8-bit activations by 8-bit weights with AVX2's
``vpmaddubsw``, which adds each pair of adjacent u8×s8 products into a signed 16-bit lane with saturation
(its documentation's reason for ``reduce_range``). With VNNI or AMX the same products are summed exactly in
32 bits. So a file is safe on every x86 CPU when, for every integer convolution, the worst pair sum its weights
allow fits in 16 bits: 255 (the largest activation code; signed activations are shifted by 128 into it) times
the two largest weight magnitudes of one output channel, since which two elements the kernel pairs depends
on its packing. 8-bit weights reach 255 × (127 + 127) = 64,770; 7-bit weights at most 255 × (64 + 64) =
32,640, which fits. The bound is read off the file alone, so it holds whichever CPU exported or runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

INT16_MAX = 32767
ACTIVATION_CODE_MAX = 255  # u8 codes; onnxruntime shifts s8 activations by 128 into u8 for its u8s8 kernels
ANY_X86 = "any x86 CPU"
VNNI_ONLY = "x86 CPUs with VNNI or AMX (8-bit weights can saturate AVX2's 16-bit pair sums)"


@dataclass(frozen=True)
class PairSum:
    """One integer convolution's worst pair sum, and whether it fits in AVX2's signed 16 bits."""

    node: str
    worst: int

    @property
    def saturates(self) -> bool:
        return self.worst > INT16_MAX


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _quantized_weight(node: onnx.NodeProto, producers: dict, inits: dict, base_dir) -> np.ndarray | None:
    """The int8 weight codes an integer convolution multiplies by: a QLinearConv's ``w``, or the int8
    initializer behind the DequantizeLinear that feeds a QDQ Conv's weight."""
    if node.op_type == "QLinearConv":
        name = node.input[3]
    elif node.op_type == "Conv" and len(node.input) > 1:
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or producers.get(node.input[0]) is None \
                or producers[node.input[0]].op_type != "DequantizeLinear":
            return None
        name = dq.input[0]
    else:
        return None
    tensor = inits.get(name)
    if tensor is None or tensor.data_type != onnx.TensorProto.INT8:
        return None
    if uses_external_data(tensor):  # tmdeploy.onnxfile.load left it out, and checked where it points
        if base_dir is None:
            raise ValueError(f"{name}: its data is outside the file; pass the file's directory")
        loaded = onnx.TensorProto()
        loaded.CopyFrom(tensor)
        load_external_data_for_tensor(loaded, str(base_dir))
        tensor = loaded
    return numpy_helper.to_array(tensor)


def pair_sums(model: onnx.ModelProto, base_dir: Path | str | None = None) -> list[PairSum]:
    """The worst pair sum of every integer convolution in ``model`` (QDQ Conv or QLinearConv), exactly, in
    Python ints; ``base_dir``: where weights kept outside the file are."""
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = _initializers(model)
    sums = []
    for node in model.graph.node:
        weight = _quantized_weight(node, producers, inits, base_dir)
        if weight is None or weight.size == 0:
            continue
        magnitudes = np.abs(weight.reshape(weight.shape[0], -1).astype(np.int64))
        top_two = -np.sort(-magnitudes, axis=1)[:, :2].sum(axis=1)
        sums.append(PairSum(node.name, ACTIVATION_CODE_MAX * int(top_two.max())))
    return sums


def saturating(model: onnx.ModelProto, base_dir: Path | str | None = None) -> list[PairSum]:
    """The integer convolutions whose pair sums can exceed 16 bits on an AVX2 CPU without VNNI."""
    return [s for s in pair_sums(model, base_dir) if s.saturates]


def safe_on(model: onnx.ModelProto, base_dir: Path | str | None = None) -> str:
    """Which x86 CPUs onnxruntime computes ``model``'s integer convolutions exactly on, as the metadata says."""
    return exact_on(pair_sums(model, base_dir))


def exact_on(sums: list[PairSum]) -> str:
    """:func:`safe_on` for pair sums already computed."""
    return VNNI_ONLY if any(s.saturates for s in sums) else ANY_X86


def warning(model: onnx.ModelProto, base_dir: Path | str | None = None) -> str | None:
    """One line for a file that can saturate on a CPU without VNNI, None for one that cannot."""
    bad = saturating(model, base_dir)
    if not bad:
        return None
    worst = max(bad, key=lambda s: s.worst)
    return (f"this INT8 file can saturate onnxruntime's 16-bit pair sums on x86 CPUs without VNNI or AMX: "
            f"{len(bad)} integer convolution(s), worst pair sum {worst.worst:,} > {INT16_MAX:,} "
            f"(re-export with --int8-target onnxruntime for a file exact on any x86 CPU)")


def signed_activations(model: onnx.ModelProto) -> bool:
    """Whether the file quantizes activations as symmetric signed INT8 (TensorRT's recipe): every
    QuantizeLinear's zero point is int8."""
    inits = _initializers(model)
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    return bool(quantizers) and all(len(n.input) > 2 and n.input[2] in inits
                                    and inits[n.input[2]].data_type == onnx.TensorProto.INT8 for n in quantizers)
