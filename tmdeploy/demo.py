"""The whole pipeline on built-in data: train on digits, export, prove parity, benchmark, summarize.

This is what `tmdeploy demo` runs on a fresh machine, and what CI runs after installing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tmdeploy import checkpoint
from tmdeploy.bench import BenchOptions
from tmdeploy.bench import run as run_bench
from tmdeploy.export import ExportOptions, export_onnx
from tmdeploy.fileio import atomic_write, check_output_dir
from tmdeploy.report import write_report as write_bench_report
from tmdeploy.train import TrainConfig, train
from tmdeploy.verify import CheckOptions, check, write_report

log = logging.getLogger(__name__)

# what the demo writes at the top of its folder, named once: checked before the work starts, then written
FILES = {"checkpoint": "ckpt.pt", "onnx": "model.onnx", "onnx_uint8": "model_uint8.onnx", "inputs": "inputs.json",
         "reference_outputs": "reference_outputs.json", "summary": "summary.json"}


def run_demo(out_dir: Path, config: TrainConfig | None = None, show_progress: bool = True) -> dict:
    """Run every stage into ``out_dir`` and return the summary (also written as summary.json).

    ``config`` defaults to ``TrainConfig()`` on digits: the demo trains exactly as `tmdeploy train` does.
    """
    config = config or TrainConfig()
    config.validate()  # before the folder is made or a step announced: a bad option changes nothing
    out_dir = check_output_dir(out_dir, FILES.values(), option="--out-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}

    def step(name):
        steps[name] = time.perf_counter()
        log.info("[demo] %s", name)

    step("train")
    ckpt_path = out_dir / FILES["checkpoint"]
    result = train(config, out=ckpt_path, show_progress=show_progress)
    ckpt = checkpoint.load_model(ckpt_path)

    step("export")
    onnx_path = export_onnx(ckpt, out_dir / FILES["onnx"], ExportOptions())
    baked_path = export_onnx(ckpt, out_dir / FILES["onnx_uint8"], ExportOptions(bake_preprocess=True))
    inputs, reference_outputs = out_dir / FILES["inputs"], out_dir / FILES["reference_outputs"]

    step("check")
    report = check(ckpt, onnx_path, CheckOptions(data="digits", save_inputs=inputs, save_outputs=reference_outputs))
    write_report(report, out_dir, onnx_path.stem)
    baked_report = check(ckpt, baked_path, CheckOptions(data="digits"))
    write_report(baked_report, out_dir, baked_path.stem)

    step("bench")
    bench = run_bench(ckpt, BenchOptions(batches=(1, 32), backends=("pytorch", "ort-fp32"), min_time=1.0,
                                         show_progress=show_progress))
    write_bench_report(bench, out_dir / "bench")
    speed = {name: {str(row["batch"]): {"p50_ms": row["p50_ms"], "speedup": row.get("speedup")}
                    for row in bench.backend(name).latency}
             for name in ("pytorch", "ort-fp32")}

    summary = {
        "arch": config.arch, "data": config.data, "epochs": config.epochs, "image_size": ckpt.card.input_size[-1],
        "held_out_top1": result.accuracy, "train_seconds": round(sum(h["seconds"] for h in result.history), 1),
        "checkpoint": str(ckpt_path), "onnx": str(onnx_path), "onnx_uint8": str(baked_path),
        "parity": {p.onnx: {"passed": p.passed, "max_abs_error": p.outputs["logits"]["max_abs_error"],
                            "top1_agreement": p.outputs["logits"]["top1_agreement"]}
                   for p in (report, baked_report)},
        "latency": speed, "bench_report": str(out_dir / "bench" / "bench.md"),
        "polygraphy_recheck": (f"polygraphy run {onnx_path} --onnxrt --load-inputs {inputs} "
                               f"--load-outputs {reference_outputs} --atol 1e-4 --rtol 1e-3"),
    }
    names = list(steps)
    summary["seconds"] = {n: round((steps[names[i + 1]] if i + 1 < len(names) else time.perf_counter()) - steps[n], 1)
                          for i, n in enumerate(names)}
    summary["passed"] = all(v["passed"] for v in summary["parity"].values())
    atomic_write(out_dir / FILES["summary"], lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"tmdeploy demo: {summary['arch']} on {summary['data']}, {summary['epochs']} epochs "
             f"({summary['train_seconds']} s), held-out top-1 {summary['held_out_top1']:.2%}"]
    for path, p in summary["parity"].items():
        lines.append(f"  {Path(path).name}: parity {'PASS' if p['passed'] else 'FAIL'}, "
                     f"max abs error {p['max_abs_error']:.2e}, top-1 agreement {p['top1_agreement']:.2%}")
    ort = summary["latency"].get("ort-fp32", {})
    if ort:
        lines.append("  onnxruntime vs PyTorch eager (p50): " + ", ".join(
            f"batch {b}: {v['p50_ms']:.2f} ms, {v['speedup']:.2f}× eager" for b, v in ort.items()
            if v.get("speedup") is not None) + f"  (report: {summary['bench_report']})")
    lines.append("  time: " + ", ".join(f"{k} {v}s" for k, v in summary["seconds"].items()))
    lines.append(f"  re-check without tmdeploy: {summary['polygraphy_recheck']}")
    return "\n".join(lines)
