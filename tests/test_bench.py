"""Bench and report: structure and consistency of a tiny run, never timings (CI machines are shared)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tmdeploy.bench import BenchOptions, run
from tmdeploy.bench.backends import default_names
from tmdeploy.bench.timing import Budget, Samples, latency_stats, measure, paired_ratio
from tmdeploy.cli import main
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.report import to_markdown, write_report

ROOT = Path(__file__).resolve().parent.parent
STAT_KEYS = {"batch", "iterations", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "first_call_s", "speedup"}
# Few iterations, one thread each (on a shared 2-core machine OpenMP barriers stall PyTorch's second thread).
QUICK = dict(batches=(1, 2), min_time=0.0, min_iterations=3, warmup=1, threads=1, accuracy_limit=6,
             show_progress=False)


@pytest.fixture(scope="module")
def tiny_ckpt(tiny):
    """Untrained rn26 on 1×8×8 inputs: the smallest input the architecture takes, so runs are cheap."""
    return tiny("rn26")


@pytest.fixture(scope="module")
def tiny_result(tiny_ckpt):
    """Every CPU backend; torch.compile with the 'eager' backend, which traces with dynamo but skips codegen."""
    return run(tiny_ckpt, BenchOptions(compile_backend="eager", **QUICK))


def test_every_backend_has_an_entry_with_statistics(tiny_result):
    assert [b.name for b in tiny_result.backends] == list(default_names("cpu"))
    ok = {"pytorch", "torch-compile", "ort-fp32", "ort-fp16", "ort-int8", "ort-int8-trt", "openvino-fp32"}
    assert {b.name for b in tiny_result.backends if b.status == "ok"} == ok
    for b in tiny_result.backends:
        if b.status != "ok":
            assert b.status == "skipped" and b.note and not b.latency
            continue
        assert [s["batch"] for s in b.latency] == [1, 2]
        for s in b.latency:
            assert set(s) == STAT_KEYS
            assert s["iterations"] >= 3
            assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["mean_ms"] > 0
            assert s["throughput"] == pytest.approx(s["batch"] / s["mean_ms"] * 1e3)
            assert s["speedup"] > 0 and math.isfinite(s["speedup"])


def test_tensorrt_is_skipped_with_the_reason_on_cpu(tiny_result):
    for name in ("trt-fp32", "trt-fp16", "trt-int8"):
        assert "--device cuda" in tiny_result.backend(name).note


def test_eager_is_the_unit_of_the_ratios(tiny_result):
    assert all(s["speedup"] == 1.0 for s in tiny_result.backend("pytorch").latency)


def test_accuracy_and_agreement_are_fractions(tiny_result):
    assert tiny_result.data == {"spec": "digits", "split": "test", "samples": 6,
                                "split_by": "tmdeploy's seeded stratified 80/20 split of digits (seed 0)",
                                "agreement_with": "PyTorch eager on the CPU"}
    eager = tiny_result.backend("pytorch")
    assert eager.agreement == 1.0
    for b in tiny_result.backends:
        if b.status == "ok":
            assert 0.0 <= b.top1 <= 1.0 and 0.0 <= b.agreement <= 1.0
            assert b.top1 * 6 == pytest.approx(round(b.top1 * 6))  # a count of the 6 images


def test_result_is_plain_json(tiny_result):
    d = tiny_result.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["machine"]["cores"] >= 1 and d["machine"]["torch_threads"] == 1
    assert d["options"]["batches"] == [1, 2]


@pytest.fixture(scope="module")
def report(tiny_result, tmp_path_factory):
    return write_report(tiny_result, tmp_path_factory.mktemp("report"))


def test_report_writes_json_markdown_and_real_pngs(tiny_result, report):
    assert set(report) == {"json", "markdown", "latency", "accuracy"}
    assert json.loads(report["json"].read_text()) == tiny_result.to_dict()
    md = report["markdown"].read_text()
    assert "## Latency, batch 1" in md and "## Latency, batch 2" in md and "## Accuracy on digits" in md
    assert "| PyTorch eager | fp32 |" in md and "1.00×" in md
    assert "TensorRT FP32 (skipped)" in md
    for kind in ("latency", "accuracy"):
        blob = report[kind].read_bytes()
        assert blob.startswith(b"\x89PNG\r\n\x1a\n") and len(blob) > 1_000


def test_markdown_from_the_saved_json_is_the_same(report):
    """A report can be rewritten from an old bench.json without re-running the benchmark."""
    assert to_markdown(json.loads(report["json"].read_text())) == report["markdown"].read_text()


def test_compile_failure_is_reported_not_raised(tiny_ckpt):
    """A torch.compile backend that fails while compiling (a real registered one) fails only that backend's row."""
    from torch._dynamo import register_backend

    def crashing_compiler(graph_module, example_inputs):
        raise RuntimeError("the compiler crashed")

    register_backend(crashing_compiler, name="tmdeploy_test_crashing")
    result = run(tiny_ckpt, BenchOptions(backends=("pytorch", "torch-compile"), compile_backend="tmdeploy_test_crashing",
                                         data=None, **{**QUICK, "batches": (1,)}))
    compiled = result.backend("torch-compile")
    assert compiled.status == "failed" and "tmdeploy_test_crashing" in compiled.note and not compiled.latency
    assert compiled.outcome == "failed" and compiled.built  # built, then failed: not "could not build"
    assert result.backend("pytorch").status == "ok" and result.backend("pytorch").latency


def test_timing_records_a_failing_call_and_goes_on():
    calls = {"fine": lambda: None, "broken": lambda: 1 / 0}
    samples = measure(calls, Budget(min_time=0.0, min_iterations=2, min_rounds=3, warmup=1))
    assert samples["broken"].error.startswith("ZeroDivisionError") and not samples["broken"].times
    assert samples["fine"].error is None and len(samples["fine"].round_medians) == 3


def test_a_deadline_ends_the_rounds_after_the_first():
    samples = measure({"a": lambda: None, "b": lambda: None}, Budget(min_time=10.0, min_rounds=50, warmup=0),
                      deadline=0.0)
    assert [len(s.round_medians) for s in samples.values()] == [1, 1]


def test_an_anchor_is_timed_beside_every_call_so_drift_within_a_round_cancels():
    """A machine that slows steadily (a simulated clock: each timed iteration costs its work times a load that
    grows 0.1 % per iteration) and ten calls, each half the anchor's work. Interleaved alone, calls timed late
    in a round are compared with an anchor chunk timed long before; beside the anchor, every ratio is 2."""
    clock = {"iterations": 0}

    def drifting_timer(call) -> float:
        clock["iterations"] += 1
        return call() * (1 + clock["iterations"] / 1000)

    calls = {"anchor": lambda: 0.02, **{f"call{i}": (lambda: 0.01) for i in range(10)}}
    budget = Budget(min_time=0.0, min_iterations=1, min_rounds=6, warmup=1, chunk_time=0.1)
    for anchor, worst_allowed in ((None, None), ("anchor", 0.02)):
        clock["iterations"] = 0
        samples = measure(calls, budget, drifting_timer, anchor=anchor)
        errors = [abs(paired_ratio(samples["anchor"], samples[f"call{i}"]) / 2 - 1) for i in range(10)]
        if anchor is None:
            assert max(errors) > 0.04  # the drift the anchor is there to cancel
        else:
            assert max(errors) < worst_allowed, errors
            assert all(len(samples[f"call{i}"].anchor_medians) == len(samples[f"call{i}"].round_medians) == 6
                       for i in range(10))


def test_paired_ratio_and_stats():
    base, fast = Samples(round_medians=[2.0, 4.0, 6.0]), Samples(round_medians=[1.0, 1.0, 3.0])
    assert paired_ratio(base, fast) == 2.0 and paired_ratio(base, base) == 1.0
    stats = latency_stats([0.001] * 9 + [0.011], batch=4)
    assert stats["p50_ms"] == pytest.approx(1.0) and stats["mean_ms"] == pytest.approx(2.0)
    assert stats["throughput"] == pytest.approx(2000.0)


@pytest.mark.parametrize("options, match", [
    (dict(batches=(0,)), "--batch"),
    (dict(device="tpu"), "--device"),
    (dict(backends=("tensorflow",)), "unknown backend"),
    (dict(threads=0), "--threads"),
    (dict(compile_backend="no-such-backend"), "unknown --compile-backend 'no-such-backend'"),
    (dict(min_time=float("inf")), "--min-time"),
    (dict(seed=-1), "--seed"),
    (dict(batches=(10**9,)), "--batch"),
    (dict(data="mnist"), "unknown data source 'mnist'"),
    (dict(min_top1=1.5), "--min-top1"),
    (dict(min_agreement=-0.1), "--min-agreement"),
    (dict(min_agreement=0.9, data=None), "--min-agreement needs accuracy data"),
])
def test_invalid_options_are_usage_errors(options, match):
    with pytest.raises(UsageError, match=match):
        BenchOptions(**options).validate()


def test_cuda_without_a_gpu_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TmdeployError, match="no CUDA device"):
        BenchOptions(device="cuda").validate()


@pytest.mark.parametrize("argv", [["--batch", "1,x"], ["--batch", "0"], ["--device", "tpu"]])
def test_cli_bad_values_exit_2(tiny_ckpt, argv, capsys):
    assert main(["bench", str(tiny_ckpt.path), *argv]) == 2
    assert capsys.readouterr().err.startswith("tmdeploy: error:")


def test_cli_bench_writes_the_report(tiny_ckpt, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "tmdeploy", "bench", str(tiny_ckpt.path), "--backends", "pytorch", "--batch", "1,2",
         "--min-time", "0", "--min-iterations", "2", "--warmup", "0", "--threads", "1", "--accuracy-limit", "4",
         "--quiet", "--report-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "## Latency, batch 2" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.md", "latency.png", "accuracy.png"}


def test_outcome_size_and_build_time_columns(tiny_result, report):
    """Ultralytics' columns: a status telling skipped / not built / failed / passed, size in MB, build time."""
    for b in tiny_result.backends:
        assert b.outcome == ("passed" if b.status == "ok" else "skipped") and b.below_floor == []
        if b.status == "ok":
            assert b.built and b.size_mb > 0 and b.setup_s > 0
    fp32, int8 = tiny_result.backend("ort-fp32"), tiny_result.backend("ort-int8")
    assert int8.size_mb < fp32.size_mb  # int8 weights: the file really is the one that was run
    md = report["markdown"].read_text()
    assert "## Summary" in md and "| ONNX Runtime FP32 | fp32 | ✅ passed |" in md
    assert "| TensorRT FP32 | fp32 | – skipped |" in md and "No accuracy floors were set." in md


def test_not_built_is_told_from_built_then_failed():
    from tmdeploy.bench.suite import BackendResult, judge

    never, broke, low = (BackendResult(n, n, "fp32", status="failed") for n in ("a", "b", "c"))
    broke.built = low.built = True
    low.status, low.top1, low.agreement = "ok", 0.5, 1.0
    judge([never, broke, low], BenchOptions(min_top1=0.9))
    assert [never.outcome, broke.outcome, low.outcome] == ["not built", "failed", "failed"]
    assert low.below_floor == ["top-1 50.00% < 90.00%"]


def test_cli_floor_that_a_backend_misses_exits_1_naming_it(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["bench", str(tiny_ckpt.path), "--backends", "pytorch,ort-fp32", "--batch", "2", "--min-time", "0",
                 "--min-iterations", "2", "--warmup", "0", "--threads", "1", "--accuracy-limit", "8", "--quiet",
                 "--min-top1", "1.0", "--min-agreement", "0.5", "--report-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("tmdeploy: error: below the floor: pytorch (top-1 ") and "ort-fp32 (top-1 " in err
    md = (out / "bench.md").read_text()
    assert "❎ failed" in md and "## Below the accuracy floors" in md and "Floors: top-1 ≥ 100.00%" in md
    assert json.loads((out / "bench.json").read_text())["backends"][0]["outcome"] == "failed"


def test_cuda_placement_note_counts_tensorrt_nodes_apart_from_the_cpu():
    """onnxruntime's TensorRT provider runs nodes on the GPU: they are not "on the CPU" in the bench note."""
    from collections import Counter

    from tmdeploy.bench.cuda import placement_note

    placement = Counter({("TensorrtExecutionProvider", "TRTKernel_graph"): 2, ("CUDAExecutionProvider", "Conv"): 5,
                         ("CPUExecutionProvider", "Shape"): 1})
    assert placement_note(placement) == "2/8 nodes on TensorRT, 5/8 nodes on CUDA (on the CPU: Shape)"
    assert placement_note(Counter({("CUDAExecutionProvider", "QLinearConv"): 3})) == (
        "3/3 nodes on CUDA; convolutions in INT8")
