"""Benchmark 2: the cost of the soft-max — rn26-tm per template-matching export form against the
BN-folded rn26 baseline, onnxruntime FP32 on the CPU, batch 1 and 32.

All four graphs run interleaved in one timing run; each ratio is the median over rounds of the paired
per-round latency ratio to rn26. Target: rn26-tm at most 1.2× rn26's latency at batch 32. The fastest
form is the one ``DEFAULT_FORM`` in tmdeploy/export/options.py should name.

Untrained seeded weights, 3×32×32 input. ``--profile`` adds where the time goes (onnxruntime's profiler,
per operator type, batch 32) and the convolution work per image, to explain a missed target.

    PYTHONPATH=. python benchmarks/tm_forms.py [--min-time 3] [--threads N] [--profile]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from _common import caption, number, op_times, print_table, untrained

from tmdeploy.bench.sessions import OrtSession
from tmdeploy.bench.timing import Budget, measure, paired_ratio
from tmdeploy.export import FORMS, ExportOptions, to_model_proto

BATCHES = (1, 32)
TARGET = 1.2  # rn26-tm latency / rn26 latency at batch 32
BASELINE = "rn26 (BN folded)"


def graphs() -> dict[str, onnx.ModelProto]:
    out = {BASELINE: to_model_proto(untrained("rn26"), ExportOptions())}
    tm = untrained("rn26-tm")
    for form in FORMS:
        out[f"rn26-tm {form}"] = to_model_proto(tm, ExportOptions(tm_form=form))
    return out


def conv_macs(proto: onnx.ModelProto) -> int:
    """Multiply-accumulates per image in Conv and Gemm nodes, from the shape-inferred graph."""
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*proto.graph.value_info, *proto.graph.output]}
    total = 0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            c_out, c_in_per_group, kh, kw = weights[node.input[1]]
            _, _, h, w = shapes[node.output[0]]
            total += c_out * h * w * c_in_per_group * kh * kw
        elif node.op_type == "Gemm":
            total += int(np.prod(weights[node.input[1]]))
    return total


def op_time_shares(proto: onnx.ModelProto, batch: int, threads: int | None, runs: int = 20) -> dict[str, float]:
    """Share of kernel time per operator type (after onnxruntime's fusions), from its own profiler."""
    x = np.random.default_rng(0).standard_normal((batch, *[d.dim_value for d in
                                                  proto.graph.input[0].type.tensor_type.shape.dim[1:]]))
    per_op = op_times(proto, x.astype(np.float32), threads, runs, warmup=0)
    total = sum(per_op.values())
    return {op: t / total for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=3.0, help="timed seconds per graph and batch size")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    parser.add_argument("--profile", action="store_true", help="also profile per operator type at batch 32")
    args = parser.parse_args()
    protos = graphs()
    sessions = {name: OrtSession(p, ["CPUExecutionProvider"], args.threads) for name, p in protos.items()}
    budget = Budget(min_time=args.min_time, min_iterations=20, min_rounds=10)
    rows, slowdown = [], {}
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        samples = measure({name: s.bind(x) for name, s in sessions.items()}, budget)
        for name, s in samples.items():
            ratio = 1.0 / paired_ratio(samples[BASELINE], s)
            slowdown[name, batch] = ratio
            verdict = ""
            if batch == 32 and name != BASELINE:
                verdict = f"≤ {TARGET}×: {'met' if ratio <= TARGET else f'missed by {ratio / TARGET:.2f}×'}"
            rows.append([name, str(batch), number(float(np.median(s.times)) * 1e3), f"{ratio:.2f}×",
                         str(len(s.times)), verdict])
    best = min((n for n in protos if n != BASELINE), key=lambda n: slowdown[n, 32])
    print_table("Cost of the soft-max: rn26-tm per export form vs BN-folded rn26 (onnxruntime FP32, CPU)",
                ["graph", "batch", "p50 ms", "latency / rn26", "iterations", "target (batch 32)"], rows,
                [caption(ort_threads=args.threads), "Untrained seeded weights, 3×32×32 input; ratio = median over "
                 "interleaved rounds of the per-round median latency ratio to rn26.",
                 f"Fastest form at batch 32: {best.removeprefix('rn26-tm ')}."])
    macs = {name: conv_macs(p) for name, p in protos.items()}
    rows = [[n, f"{m / 1e6:.1f}", f"{m / macs[BASELINE]:.2f}×", f"{slowdown[n, 32] / (m / macs[BASELINE]):.2f}"]
            for n, m in macs.items()]
    print_table("Convolution work per image", ["graph", "conv/gemm MMACs", "MACs / rn26",
                                               "(latency / rn26) ÷ (MACs / rn26), batch 32"], rows,
                ["The last column is the time per unit of convolution work relative to rn26: 1.00 means the "
                 "soft-max and everything else around the convolutions cost nothing extra."])
    if args.profile:
        shares = {name: op_time_shares(p, 32, args.threads) for name, p in protos.items()}
        ops = sorted({op for s in shares.values() for op in s},
                     key=lambda op: -max(s.get(op, 0) for s in shares.values()))
        print_table("Share of onnxruntime kernel time per operator type (batch 32)", ["operator", *shares],
                    [[op, *(f"{s.get(op, 0):.1%}" for s in shares.values())] for op in ops],
                    ["onnxruntime's profiler (SessionOptions.enable_profiling), 20 runs, after its graph fusions."])


if __name__ == "__main__":
    main()
