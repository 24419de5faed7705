"""Benchmark 1: onnxruntime FP32 against PyTorch eager on the CPU, batch 1 and 32, rn26-tm and rn26.

Untrained seeded weights (speed does not depend on their values), 3×32×32 CIFAR-shaped input. Both
backends of one model run interleaved in one ``tmdeploy.bench`` run; the speed-up is the median over
rounds of the paired per-round ratio. Target: onnxruntime at least 1.5× faster than eager at batch 1.

    PYTHONPATH=. python benchmarks/onnxruntime_vs_eager.py [--min-time 3] [--threads N]
"""

from __future__ import annotations

import argparse

from _common import caption, number, print_table, untrained

from tmdeploy.bench import BenchOptions, run

ARCHS = ("rn26-tm", "rn26")
BATCHES = (1, 32)
TARGET = 1.5  # onnxruntime speed-up over eager at batch 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=3.0, help="timed seconds per backend and batch size")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: each library's)")
    args = parser.parse_args()
    rows, info = [], None
    for arch in ARCHS:
        options = BenchOptions(batches=BATCHES, backends=("pytorch", "ort-fp32"), data=None, min_time=args.min_time,
                               min_iterations=20, threads=args.threads)
        result = run(untrained(arch), options)
        info = result.machine
        eager, ort = result.backend("pytorch"), result.backend("ort-fp32")
        for e, o in zip(eager.latency, ort.latency):
            target = f"≥ {TARGET}×: {'met' if o['speedup'] >= TARGET else 'missed'}" if o["batch"] == 1 else ""
            rows.append([arch, str(o["batch"]), number(e["p50_ms"]), number(o["p50_ms"]), f"{o['speedup']:.2f}×",
                         f"{e['iterations']} / {o['iterations']}", target])
    print_table("onnxruntime FP32 vs PyTorch eager (CPU)",
                ["model", "batch", "eager p50 ms", "onnxruntime p50 ms", "onnxruntime speed-up", "iterations",
                 "target"], rows,
                [caption(info), "Untrained seeded weights, 3×32×32 input; speed-up = median over interleaved "
                 "rounds of eager / onnxruntime per-round median latency."], text_columns=1)


if __name__ == "__main__":
    main()
