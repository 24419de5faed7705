"""The physical limit: how close each GPU backend comes to the roofline of the lent GPU at batch 256.

For each checkpoint, at the batch size given:
- FLOPs: every convolution and matrix product of the PyTorch model (torch.utils.flop_counter; a
  multiply-add counts 2; soft-max, norms and element-wise ops are not counted: they cost bytes, not FLOPs);
- bytes that must move: the weights of the exported graph (BatchNorm folded) plus input and logits, each
  once: what a perfectly fused kernel still reads and writes ("compulsory"); and, for context, adding every
  intermediate activation of the exported graph written once and read once ("layer by layer");
- the roofline time, max(FLOPs / peak, compulsory bytes / bandwidth), from the GPU's published figures
  below, for the arithmetic each backend really uses (FP32 convolutions run on TF32 tensor cores by
  default in cuDNN and onnxruntime; FP16 on FP16 tensor cores);
- the fraction of that limit each backend of a ``tmdeploy bench --device cuda`` run reaches:
  roofline time ÷ its measured p50 latency.

Runs anywhere (no GPU needed): the GPU is named by the bench JSON.

    PYTHONPATH=. python benchmarks/roofline.py runs/rn26.pt:gpu/rn26/bench.json runs/rn26-tm.pt:gpu/rn26-tm/bench.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from _common import number, print_table
from torch.utils.flop_counter import FlopCounterMode

from tmdeploy import checkpoint
from tmdeploy.export import ExportOptions, to_model_proto


@dataclass(frozen=True)
class GpuPeaks:
    """Dense (no sparsity) peaks from NVIDIA's data sheets, in FLOP/s and bytes/s."""

    name: str
    fp32: float
    tf32: float
    fp16: float
    bandwidth: float
    source: str


# NVIDIA H100 Tensor Core GPU data sheet (SXM5 column) and H200 data sheet (SXM); the sheets print the
# tensor-core figures with sparsity, halved here: TF32 989 → 494.7, FP16 1,979 → 989.4 TFLOP/s.
PEAKS = {
    "H100": GpuPeaks("H100 SXM5 80GB", 67e12, 494.7e12, 989.4e12, 3.35e12,
                     "NVIDIA H100 data sheet, SXM5: FP32 67 TFLOP/s, TF32 494.7, FP16 989.4 (dense), HBM3 3.35 TB/s"),
    "H200": GpuPeaks("H200 SXM 141GB", 67e12, 494.7e12, 989.4e12, 4.8e12,
                     "NVIDIA H200 data sheet, SXM: FP32 67 TFLOP/s, TF32 494.7, FP16 989.4 (dense), HBM3e 4.8 TB/s"),
}


def peaks_for(gpu_name: str) -> GpuPeaks:
    for key, peaks in PEAKS.items():
        if key in gpu_name:
            return peaks
    raise SystemExit(f"no published figures recorded here for '{gpu_name}': add them to PEAKS")


def flops(ckpt: checkpoint.Checkpoint, batch: int) -> int:
    model = ckpt.build_model().float().eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(batch, *ckpt.card.input_size))
    return int(counter.get_total_flops())


def graph_bytes(ckpt: checkpoint.Checkpoint, batch: int) -> tuple[int, int]:
    """(compulsory, layer by layer) bytes of the FP32 exported graph at ``batch``."""
    proto = to_model_proto(ckpt, ExportOptions())
    weights = sum(int(np.prod(t.dims)) * 4 for t in proto.graph.initializer)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    batch_dim.Clear()
    batch_dim.dim_value = batch
    inferred = onnx.shape_inference.infer_shapes(proto)

    def size(value) -> int:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        return int(np.prod(dims)) * 4

    io = size(inferred.graph.input[0]) + size(inferred.graph.output[0])
    activations = sum(size(v) for v in inferred.graph.value_info)
    return weights + io, weights + io + 2 * activations


def arithmetic(precision: str) -> str:
    """The peak a backend's convolutions run against (cuDNN and onnxruntime use TF32 for FP32 by default)."""
    return "fp16" if precision == "fp16" else "tf32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help="CHECKPOINT:BENCH_JSON, one per model")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    out = []
    for pair in args.pairs:
        ckpt_path, bench_path = pair.rsplit(":", 1)
        ckpt, bench = checkpoint.load(ckpt_path), json.loads(Path(bench_path).read_text())
        peaks = peaks_for(bench["machine"]["gpu"])
        total_flops = flops(ckpt, args.batch)
        compulsory, layered = graph_bytes(ckpt, args.batch)
        limits = {kind: max(total_flops / getattr(peaks, kind), compulsory / peaks.bandwidth)
                  for kind in ("fp32", "tf32", "fp16")}
        unfused = {kind: max(total_flops / getattr(peaks, kind), layered / peaks.bandwidth) for kind in limits}
        rows, record = [], {"arch": ckpt.card.arch, "batch": args.batch, "flops": total_flops,
                            "compulsory_bytes": compulsory, "layer_by_layer_bytes": layered,
                            "gpu": peaks.name, "roofline_s": limits, "unfused_bound_s": unfused, "backends": {}}
        for b in bench["backends"]:
            stats = next((s for s in b["latency"] if s["batch"] == args.batch), None)
            if b["status"] != "ok" or stats is None:
                continue
            kind = arithmetic(b["precision"])
            fraction = limits[kind] / (stats["p50_ms"] * 1e-3)
            record["backends"][b["name"]] = {"p50_ms": stats["p50_ms"], "peak": kind, "fraction_of_limit": fraction}
            rows.append([b["label"], kind.upper(), number(stats["p50_ms"]), number(limits[kind] * 1e3),
                         f"{fraction:.1%}", number(unfused[kind] * 1e3),
                         number(total_flops / (stats["p50_ms"] * 1e-3) / 1e12)])
        out.append(record)
        notes = [f"{total_flops / 1e9:.2f} GFLOP per batch of {args.batch} "
                 f"({total_flops / args.batch / 1e6:.1f} MFLOP per image); compulsory bytes "
                 f"{compulsory / 1e6:.2f} MB (weights + input + logits), layer by layer {layered / 1e6:.1f} MB",
                 f"roofline: FP32 {limits['fp32'] * 1e3:.3f} ms, TF32 {limits['tf32'] * 1e3:.3f} ms, "
                 f"FP16 {limits['fp16'] * 1e3:.3f} ms; arithmetic intensity {total_flops / compulsory:.0f} "
                 f"FLOP/byte (compulsory), {total_flops / layered:.0f} (layer by layer)",
                 f"figures: {peaks.source}", f"bench machine: {bench['machine']['gpu']}"]
        print_table(f"{ckpt.card.arch} at batch {args.batch} on {peaks.name}",
                    ["backend", "peak used", "p50 ms", "roofline ms", "fraction of limit",
                     "layer-by-layer bound ms", "achieved TFLOP/s"],
                    rows, notes)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
