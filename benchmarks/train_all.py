"""Benchmark 5: every registered architecture trained on digits with the default recipe, side by side.

One table: held-out top-1, epochs, training seconds, parameters, and onnxruntime FP32 latency relative
to rn26 at batch 1 and 32. The latencies of all exported models are measured interleaved in one timing
run (``tmdeploy.bench.timing``), so the ratios share the machine's load. ``--thread-check`` trains each
architecture a second time with the other thread count (1 ↔ 2) and reports the accuracy difference: the
recipe is meant to land within 0.5 points whatever the kernels do.

    PYTHONPATH=. python benchmarks/train_all.py [--archs rn26,rn26-tm] [--threads 1] [--thread-check]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import caption, number, print_table

from tmdeploy import models
from tmdeploy.bench.sessions import OrtSession
from tmdeploy.bench.timing import Budget, measure, paired_ratio
from tmdeploy.checkpoint import Checkpoint
from tmdeploy.export import ExportOptions, to_model_proto
from tmdeploy.threads import torch_threads
from tmdeploy.train import TrainConfig, train

BATCHES = (1, 32)
BASELINE = "rn26"


def train_one(arch: str, threads: int) -> tuple[Checkpoint, float, float]:
    """(checkpoint, held-out top-1, training seconds) with the default recipe at ``threads`` threads."""
    start = time.perf_counter()
    with torch_threads(threads):
        result = train(TrainConfig(arch=arch), show_progress=False)
    seconds = time.perf_counter() - start
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    return Checkpoint(result.card, state), result.accuracy, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(models.list_models()), help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="training and onnxruntime threads (default 1)")
    parser.add_argument("--thread-check", action="store_true", help="retrain with the other thread count")
    parser.add_argument("--min-time", type=float, default=2.0, help="timed seconds per model and batch size")
    args = parser.parse_args()
    archs = args.archs.split(",")
    if BASELINE not in archs:
        archs.insert(0, BASELINE)
    trained, rows = {}, {}
    recipe = TrainConfig()
    for arch in archs:
        ckpt, accuracy, seconds = train_one(arch, args.threads)
        trained[arch] = ckpt
        rows[arch] = {"top1": accuracy, "seconds": seconds, "params": models.count_parameters(ckpt.build_model())}
        if args.thread_check:
            rows[arch]["other_top1"] = train_one(arch, 3 - min(args.threads, 2))[1]
        print(f"{arch}: held-out top-1 {accuracy:.2%} in {seconds:.1f} s", flush=True)
    sessions = {a: OrtSession(to_model_proto(c, ExportOptions()), ["CPUExecutionProvider"], args.threads)
                for a, c in trained.items()}
    budget = Budget(min_time=args.min_time, min_iterations=20, min_rounds=10)
    c, h, w = trained[BASELINE].card.input_size
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, c, h, w)).astype(np.float32)
        samples = measure({a: s.bind(x) for a, s in sessions.items()}, budget)
        for arch, s in samples.items():
            rows[arch][batch] = 1.0 / paired_ratio(samples[BASELINE], s)
    header = ["arch", "held-out top-1", "epochs", "train s", "parameters", "params / rn26",
              *(f"latency / rn26, batch {b}" for b in BATCHES)]
    if args.thread_check:
        header.insert(2, f"top-1 at {3 - min(args.threads, 2)} thread(s)")
    table = []
    for arch in archs:
        r = rows[arch]
        row = [arch, f"{r['top1']:.2%}", str(recipe.epochs), f"{r['seconds']:.1f}", f"{r['params']:,}",
               f"{r['params'] / rows[BASELINE]['params']:.2f}×", *(f"{r[b]:.2f}×" for b in BATCHES)]
        if args.thread_check:
            row.insert(2, f"{r['other_top1']:.2%}")
        table.append(row)
    print_table("Every architecture on digits with the default recipe", header, table,
                [caption(ort_threads=args.threads),
                 f"Recipe: TrainConfig() — AdamW lr {recipe.lr}, weight decay {recipe.weight_decay}, label smoothing "
                 f"{recipe.label_smoothing}, batch "
                 f"{recipe.batch_size}, {recipe.warmup_epochs:g} warm-up epoch(s), cosine, {recipe.epochs} epochs, "
                 f"seed {recipe.seed}; digits at {h}×{w}, 360 held-out images (one image = 0.28 points).",
                 f"Training with {args.threads} thread(s). Latency: onnxruntime FP32 CPU, default export form, "
                 f"{c}×{h}×{w} input; ratio = median over interleaved rounds of the per-round latency ratio."])


if __name__ == "__main__":
    main()
