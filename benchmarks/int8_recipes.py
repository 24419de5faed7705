"""Benchmark: which INT8 recipe onnxruntime runs fastest on this CPU, and what each costs in agreement.

The recipes are ``tmdeploy.export.precision.INT8_RECIPES``: per-tensor vs per-channel weight scales,
QOperator (QLinearConv in the file) vs QDQ (pairs onnxruntime fuses when it loads the file), 8-bit weights
(``onnxruntime-vnni``) against the default 7-bit ones (exact without VNNI too), quantizing the residual Adds too,
leaving the template-matching value convolutions in float, and leaving out the channels-last rewrites of the
float ops (``ort-plain-float``: what ``tmdeploy.export.channels_last`` buys); ``tensorrt`` is the symmetric
signed recipe, whose agreement is measured in its own exact arithmetic (QDQ run op by op: onnxruntime's fusions
off), as ``tmdeploy check`` judges it.

Speed: every recipe's graph and the FP32 graph of one model run interleaved in one timing run; each ratio is
the median over rounds of the paired per-round latency ratio FP32 / recipe (above 1: faster than FP32). They
are timed on seeded untrained weights at ``--size`` (speed does not depend on the values), calibrated on
digits upsampled to that size. Agreement: the same recipes on trained checkpoints (``--checkpoints``, else
trained here with the default recipe), top-1 agreement with their FP32 graph on the whole digits test split.
The CPU's INT8 kind (VNNI, AMX, AVX2 only), its flags and the recipes ``tmdeploy.bench.machine.int8_recipes``
picks for it are printed with the tables.

    PYTHONPATH=. python benchmarks/int8_recipes.py [--checkpoints rn26-tm.pt rn26.pt] [--size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import caption, number, print_table, untrained

from tmdeploy import checkpoint, data
from tmdeploy.bench import machine
from tmdeploy.bench.backends import predict_all
from tmdeploy.bench.sessions import OrtSession
from tmdeploy.bench.timing import Budget, measure, paired_ratio
from tmdeploy.export import ExportOptions, to_model_proto
from tmdeploy.export.metadata import ModelMetadata, props, write
from tmdeploy.export.precision import INT8_RECIPES, lower_precision

BATCHES = (1, 32)
ARCHS = ("rn26-tm", "rn26")
FP32 = "fp32"


def graphs(ckpt: checkpoint.Checkpoint) -> dict:
    """The FP32 graph and one INT8 graph per recipe, calibrated on 256 digits training images."""
    fp32 = to_model_proto(ckpt, ExportOptions())
    meta = ModelMetadata.from_props(props(fp32))
    out = {FP32: fp32}
    logging.root.setLevel(logging.ERROR)  # onnxruntime.quantization's advice, once per graph
    for name, recipe in INT8_RECIPES.items():
        out[name] = lower_precision(fp32, "int8", meta=meta, calib_data="digits", int8_recipe=recipe,
                                    show_progress=False)
        write(out[name], replace(meta, precision="int8"))
    return out


def speed(arch: str, size: int, threads: int | None, budget: Budget) -> dict[int, dict[str, float]]:
    models = graphs(untrained(arch, 1, size))
    sessions = {name: OrtSession(g, ["CPUExecutionProvider"], threads) for name, g in models.items()}
    ratios = {}
    for batch in BATCHES:
        x = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
        samples = measure({name: s.bind(x) for name, s in sessions.items()}, budget)
        ratios[batch] = {name: paired_ratio(samples[FP32], s) for name, s in samples.items()}
        ratios[batch]["fp32 p50 ms"] = float(np.median(samples[FP32].times) * 1e3)
    return ratios


def agreement(ckpt: checkpoint.Checkpoint, threads: int | None) -> dict[str, float]:
    c, h, _ = ckpt.card.input_size
    images, _ = data.stack(data.load(ckpt.card.training_data, image_size=h, in_chans=c).test)
    x = data.normalize(images, ckpt.card.mean, ckpt.card.std).numpy()
    top = {name: predict_all(OrtSession(g, ["CPUExecutionProvider"], threads, fuse=name != "tensorrt"), x, 32)
           .argmax(axis=1) for name, g in graphs(ckpt).items()}
    return {name: float((t == top[FP32]).mean()) for name, t in top.items()} | {"images": len(x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", nargs=2, type=Path, metavar=("RN26_TM", "RN26"))
    parser.add_argument("--size", type=int, default=32, help="input side for the timing (1 channel)")
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    budget = Budget(min_time=args.min_time, min_iterations=10, min_rounds=8, warmup=3)
    flags = machine.cpu_flags()
    pick, why = machine.int8_recipes(flags)
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoints:
            ckpts = [checkpoint.load(p) for p in args.checkpoints]
        else:
            from tmdeploy.train import TrainConfig, train

            ckpts = []
            for arch in ARCHS:
                train(TrainConfig(arch=arch), out=Path(tmp) / f"{arch}.pt", show_progress=False)
                ckpts.append(checkpoint.load(Path(tmp) / f"{arch}.pt"))
        names = list(INT8_RECIPES)
        for ckpt in ckpts:
            arch = ckpt.card.arch
            ratios = speed(arch, args.size, args.threads, budget)
            agree = agreement(ckpt, args.threads)
            rows = [[name, *(f"{ratios[b][name]:.2f}×" for b in BATCHES), f"{agree[name]:.2%}"] for name in names]
            c, h, w = ckpt.card.input_size
            print_table(
                f"{arch}: INT8 recipes on onnxruntime CPU ({machine.int8_kind(flags)}), speed at 1×{args.size}×{args.size}",
                ["recipe", *(f"speed-up over FP32, batch {b}" for b in BATCHES),
                 f"agreement with FP32 ({agree['images']} digits test images, trained {c}×{h}×{w})"],
                rows,
                ["FP32 p50: " + ", ".join(f"batch {b} {number(ratios[b]['fp32 p50 ms'])} ms" for b in BATCHES),
                 f"CPU flags: {', '.join(flags) or 'none known'}; "
                 f"tmdeploy optimize tries {', '.join(pick)} here ({why})",
                 caption(ort_threads=args.threads),
                 "All graphs of the model timed interleaved in one run; on a shared machine the absolute times "
                 "move with the load, the paired ratios much less."],
            )


if __name__ == "__main__":
    main()
