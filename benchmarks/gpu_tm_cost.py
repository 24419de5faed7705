"""The soft-max's cost on a GPU: rn26-tm latency ÷ rn26's under a PyTorch CUDA graph and under
onnxruntime's CUDA provider in each configuration tried, all interleaved in one timing run.

Goal (issue 13): at most 1.1× at batch 256. onnxruntime configurations: IO binding, its CUDA graph, and
``prefer_nhwc`` (channels-last convolutions), in FP32 and FP16; rn26-tm also in every template-matching
export form. ``--profile`` adds the CUDA kernels that cost most in each model (torch.profiler, eager
PyTorch, batch 256), to say where a ratio above the goal comes from.

Runs on a GPU machine (benchmarks/gpu_device.sh); the checkpoints only fix the shapes, weights do not
change the speed.

    PYTHONPATH=. python benchmarks/gpu_tm_cost.py runs/rn26.pt runs/rn26-tm.pt [--batch 256,32,1] [--profile]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import caption, number, print_table

from tmdeploy import checkpoint
from tmdeploy.bench import machine
from tmdeploy.bench.cuda import CudaGraphSession, OrtCudaGraphSession, OrtIoBindingSession, event_timer
from tmdeploy.bench.timing import Budget, measure, paired_ratio
from tmdeploy.errors import TmdeployError
from tmdeploy.export import DEFAULT_FORM, FORMS, ExportOptions, to_model_proto
from tmdeploy.export.precision import lower_precision
from tmdeploy.export.metadata import ModelMetadata, props

GOAL = 1.1
NHWC = {"prefer_nhwc": "1"}


def ort_configs(ckpt, forms) -> dict[str, object]:
    """Each onnxruntime configuration's session builder for one model, by label."""
    builders = {}
    for form in forms:
        fp32 = to_model_proto(ckpt, ExportOptions(tm_form=form))
        fp16 = lower_precision(fp32, "fp16", meta=ModelMetadata.from_props(props(fp32)),
                               calib_data=ckpt.card.training_data, show_progress=False)
        tag = "" if len(forms) == 1 else f" [{form}]"
        for precision, proto in (("fp32", fp32), ("fp16", fp16)):
            builders[f"ort {precision} io-binding{tag}"] = lambda p=proto: OrtIoBindingSession(p)
            builders[f"ort {precision} cuda-graph{tag}"] = lambda p=proto: OrtCudaGraphSession(p)
            builders[f"ort {precision} cuda-graph nhwc{tag}"] = lambda p=proto: OrtCudaGraphSession(p, NHWC)
    return builders


def sessions(baseline, tm) -> dict[tuple[str, str], object]:
    """(model, configuration) → session; configurations that fail to build are printed and left out."""
    out = {("rn26", "pytorch cuda-graph"): CudaGraphSession(baseline.build_model().float().cuda().eval()),
           ("rn26-tm", "pytorch cuda-graph"): CudaGraphSession(tm.build_model().float().cuda().eval())}
    for model, ckpt, forms in (("rn26", baseline, (DEFAULT_FORM,)), ("rn26-tm", tm, FORMS)):
        for label, build in ort_configs(ckpt, forms).items():
            try:
                out[(model, label)] = build()
            except TmdeployError as err:
                print(f"- {model} {label}: not built ({err})")
    return out


def timing(built: dict, batch: int, ckpt, budget: Budget) -> dict:
    x = np.random.default_rng(0).standard_normal((batch, *ckpt.card.input_size)).astype(np.float32)
    calls = {f"{model}|{label}": session.bind(x) for (model, label), session in built.items()}
    return measure(calls, budget, event_timer)


def ratios(samples: dict) -> dict[str, tuple[float, float, float]]:
    """Configuration → (rn26 p50 ms, rn26-tm p50 ms, paired rn26-tm ÷ rn26), where both ran."""
    out = {}
    for key, tm in samples.items():
        model, label = key.split("|", 1)
        if model != "rn26-tm" or tm.error:
            continue
        base_label = label.split(" [")[0]
        base = samples.get(f"rn26|{base_label}")
        if base is None or base.error:
            continue
        out[label] = (np.median(base.times) * 1e3, np.median(tm.times) * 1e3, paired_ratio(tm, base))
    return out


def profile(ckpt, batch: int, top: int = 12) -> list[dict]:
    """The CUDA kernels that cost most in eager PyTorch at ``batch``, from torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = ckpt.build_model().float().cuda().eval()
    x = torch.randn(batch, *ckpt.card.input_size, device="cuda")
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                model(x)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    return [{"kernel": e.key[:90], "calls_per_run": e.count // 20, "us_per_run": e.device_time_total / 20,
             "share": e.device_time_total / total} for e in events[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path, help="rn26 checkpoint")
    parser.add_argument("tm", type=Path, help="rn26-tm checkpoint")
    parser.add_argument("--batch", default="256,32,1", help="the goal's batch size first")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds of timed calls per configuration")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    baseline, tm = checkpoint.load(args.baseline), checkpoint.load(args.tm)
    built = sessions(baseline, tm)
    budget = Budget(min_time=args.min_time, min_iterations=20, warmup=3)
    info = machine.describe("cuda")
    out = {"machine": info, "goal": GOAL, "batches": {}}
    batches = [int(b) for b in args.batch.split(",")]
    for batch in batches:
        samples = timing(built, batch, tm, budget)
        measured = ratios(samples)
        rows = [[label, number(base_ms), number(tm_ms), f"{ratio:.2f}×"]
                for label, (base_ms, tm_ms, ratio) in measured.items()]
        print_table(f"rn26-tm ÷ rn26, batch {batch}", ["configuration", "rn26 p50 ms", "rn26-tm p50 ms",
                                                       "rn26-tm ÷ rn26"], rows,
                    [caption(info), f"goal at batch 256: ≤ {GOAL}× (paired per-round ratio, interleaved)"])
        out["batches"][batch] = {key: {"p50_ms": float(np.median(s.times) * 1e3) if s.times else None,
                                       "error": s.error} for key, s in samples.items()}
        out["batches"][batch]["ratios"] = {label: round(ratio, 2) for label, (_, _, ratio) in measured.items()}
    if args.profile:
        top = max(batches)
        for name, ckpt in (("rn26", baseline), ("rn26-tm", tm)):
            kernels = profile(ckpt, top)
            out[f"profile_{name}"] = kernels
            print_table(f"{name}: CUDA kernels, eager PyTorch, batch {top}",
                        ["kernel", "calls per run", "µs per run", "share"],
                        [[k["kernel"], str(k["calls_per_run"]), number(k["us_per_run"]), f"{k['share']:.1%}"]
                         for k in kernels], [caption(info)])
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
