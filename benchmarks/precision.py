"""Benchmark: FP32 vs FP16 vs INT8 (TensorRT and ONNX Runtime recipes) in onnxruntime on the CPU,
batch 1 and 32, rn26-tm and rn26, with top-1 agreement with FP32 on the digits test split.

The four graphs of one model run interleaved in one timing run; each ratio is the median over rounds of
the paired per-round latency ratio to FP32. Agreement and INT8 calibration need trained weights, so the
models are trained here (the default recipe, ``TrainConfig(arch=...)``: digits at 16×16, about 99 %
held-out top-1) unless checkpoints are given;
their held-out accuracy is printed with them. Lowering is ``tmdeploy.export.precision.lower_precision``
(INT8 calibrated on 256 digits training images).

    PYTHONPATH=. python benchmarks/precision.py [--checkpoints A.pt B.pt] [--min-time 2] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import caption, number, print_table

from tmdeploy import checkpoint, data
from tmdeploy.bench.backends import Context, predict_all
from tmdeploy.bench.sessions import OrtSession
from tmdeploy.bench.timing import Budget, measure, paired_ratio
from tmdeploy.train import TrainConfig, train

BATCHES = (1, 32)
GRAPHS = {"FP32": ("fp32", None), "FP16": ("fp16", None), "INT8 tensorrt recipe": ("int8", "tensorrt"),
          "INT8 onnxruntime recipe": ("int8", "onnxruntime")}
RECIPES = (TrainConfig(arch="rn26-tm"), TrainConfig(arch="rn26"))


def trained(directory: Path) -> list[checkpoint.Checkpoint]:
    out = []
    for recipe in RECIPES:
        path = directory / f"{recipe.arch}.pt"
        train(recipe, out=path, show_progress=False)
        out.append(checkpoint.load(path))
    return out


def benchmark(ckpt: checkpoint.Checkpoint, budget: Budget, threads: int | None) -> list[list[str]]:
    c, h, _ = ckpt.card.input_size
    images, labels = data.stack(data.load("digits", image_size=h, in_chans=c).test)
    x = data.normalize(images, ckpt.card.mean, ckpt.card.std).numpy()
    ctx = Context(ckpt, "cpu", BATCHES, calib_data="digits", threads=threads)
    sessions = {name: OrtSession(ctx.onnx(*how), ["CPUExecutionProvider"], threads) for name, how in GRAPHS.items()}
    predictions = {name: predict_all(s, x, max(BATCHES)).argmax(1) for name, s in sessions.items()}
    rows = []
    for batch in BATCHES:
        samples = measure({name: s.bind(x[:batch]) for name, s in sessions.items()}, budget)
        for name, s in samples.items():
            agreement = (predictions[name] == predictions["FP32"]).mean()
            rows.append([ckpt.card.arch, name, str(batch), number(float(np.median(s.times)) * 1e3),
                         f"{1 / paired_ratio(samples['FP32'], s):.2f}×", f"{agreement:.2%}",
                         f"{(predictions[name] == labels.numpy()).mean():.2%}"])
    ctx.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, nargs="+", help="trained checkpoints (default: train here)")
    parser.add_argument("--min-time", type=float, default=2.0, help="timed seconds per graph and batch size")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    args = parser.parse_args()
    budget = Budget(min_time=args.min_time, min_iterations=20, min_rounds=10)
    with tempfile.TemporaryDirectory(prefix="tmdeploy-precision-") as tmp:
        ckpts = [checkpoint.load(p) for p in args.checkpoints] if args.checkpoints else trained(Path(tmp))
        rows = [row for ckpt in ckpts for row in benchmark(ckpt, budget, args.threads)]
    sizes = ", ".join(f"{c.card.arch} {'×'.join(map(str, c.card.input_size))}" for c in ckpts)
    print_table("FP32 vs FP16 vs INT8 in onnxruntime (CPU)",
                ["model", "graph", "batch", "p50 ms", "latency / FP32", "top-1 agreement with FP32",
                 "top-1 accuracy"], rows,
                [caption(ort_threads=args.threads), f"Inputs: {sizes}; agreement and accuracy over the digits test "
                 "split. Latency ratio = median over interleaved rounds of the per-round median latency ratio to FP32.",
                 "onnxruntime's CPU provider runs FP16 convolutions through FP32 kernels (with casts), so FP16 "
                 "here shows the graph's overhead, not FP16 arithmetic."], text_columns=2)


if __name__ == "__main__":
    main()
