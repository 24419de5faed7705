"""Benchmark: where an INT8 graph's time goes on onnxruntime CPU, next to its FP32 graph, per op type.

It answers why INT8 gains less on rn26-tm than on rn26: the integer kernels (QLinearConv, QLinearAdd) speed
up both alike, but the template-matching blocks' RMS norm and soft-max stay float ops on float tensors,
between DequantizeLinear and QuantizeLinear, and run in onnxruntime's channels-last layout there (its
integer convolutions are channels-last), where a per-pixel value broadcast over the channels is applied a
span of C values at a time instead of H×W. The INT8 graph is profiled with and without
``tmdeploy.export.channels_last``'s rewrites of those float ops (recipe ``ort-plain-float``: without). The times are onnxruntime's own profile (``enable_profiling``),
summed per op type and divided by the runs; profiling adds a little to every node, so the totals sit above
``benchmarks/int8_recipes.py``'s latencies, whose ratios are the speed claim. Seeded untrained weights
(speed does not depend on the values), calibrated on digits upsampled to ``--size``.

    PYTHONPATH=. python benchmarks/int8_profile.py [--size 32] [--batch 32] [--threads 1] [--runs 20]
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter

import numpy as np
from _common import caption, number, op_times, print_table, untrained

from tmdeploy.export import ExportOptions, to_model_proto
from tmdeploy.export.metadata import ModelMetadata, props
from tmdeploy.export.precision import INT8_RECIPES, lower_precision

ARCHS = ("rn26-tm", "rn26")
INTEGER_OPS = ("QLinearConv", "QLinearAdd")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT_CONV_OPS = ("Conv", "ReorderInput", "ReorderOutput")  # FP32 convolutions in their blocked layout


def group(times: Counter) -> dict[str, float]:
    integer = sum(times[op] for op in INTEGER_OPS)
    qdq = sum(times[op] for op in QDQ_OPS)
    conv = sum(times[op] for op in FLOAT_CONV_OPS)
    return {"integer kernels": integer, "quantize/dequantize": qdq, "float convolutions": conv,
            "other float ops": sum(times.values()) - integer - qdq - conv, "total": sum(times.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    logging.root.setLevel(logging.ERROR)  # onnxruntime.quantization's pre-processing advice, once per graph
    x = np.random.default_rng(0).standard_normal((args.batch, 1, args.size, args.size)).astype(np.float32)
    recipes = {"INT8 (ort-plain-float)": "ort-plain-float", "INT8 (onnxruntime recipe)": "onnxruntime"}
    for arch in ARCHS:
        fp32 = to_model_proto(untrained(arch, 1, args.size), ExportOptions())
        meta = ModelMetadata.from_props(props(fp32))
        graphs = {"FP32": fp32, **{column: lower_precision(fp32, "int8", meta=meta, calib_data="digits",
                                                             int8_recipe=INT8_RECIPES[recipe], show_progress=False)
                                   for column, recipe in recipes.items()}}
        times = {name: op_times(graph, x, args.threads, args.runs) for name, graph in graphs.items()}
        groups = {name: group(t) for name, t in times.items()}
        ops = sorted(set().union(*times.values()), key=lambda op: -sum(t[op] for t in times.values()))
        rows = [[op, *(number(t[op]) for t in times.values())] for op in ops
                if max(t[op] for t in times.values()) >= 0.05]
        rows += [[f"**{name}**", *(number(g[name]) for g in groups.values())] for name in groups["FP32"]]
        int8 = groups["INT8 (onnxruntime recipe)"]
        print_table(
            f"{arch}: onnxruntime CPU profile, ms per run, batch {args.batch}, 1×{args.size}×{args.size}",
            ["op type", *times], rows,
            [f"onnxruntime recipe: integer kernels {int8['integer kernels'] / int8['total']:.0%} of INT8's time; "
             f"float ops and their quantize/dequantize {1 - int8['integer kernels'] / int8['total']:.0%}",
             "ort-plain-float: the same quantization without tmdeploy.export.channels_last's rewrites of the float ops",
             caption(ort_threads=args.threads)],
        )

if __name__ == "__main__":
    main()
