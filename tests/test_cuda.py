"""The CUDA paths: event timing, CUDA graphs, onnxruntime's CUDA provider (IO binding, its CUDA graph),
``check --device cuda``, ``bench --device cuda`` and ``optimize --device cuda``.

Skipped on machines without a GPU (CI); benchmarks/gpu_device.sh runs this file on a lent H100/H200.
The onnxruntime tests also need onnxruntime-gpu, which replaces the CPU wheel.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tmdeploy.bench import BenchOptions, run
from tmdeploy.bench.cuda import CudaGraphSession, OrtCudaGraphSession, OrtIoBindingSession, event_timer
from tmdeploy.bench.sessions import OrtSession, TorchSession
from tmdeploy.cli import main
from tmdeploy.export import ExportOptions, export_onnx, to_model_proto
from tmdeploy.optimize.stage import CHOICE_KEY
from tmdeploy.verify import CheckOptions, check

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_ort_cuda = pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                    reason="onnxruntime-gpu is not installed")


@pytest.fixture(scope="module")
def small_ckpt(tiny):
    """Seeded, untrained rn26-tm at 1×16×16 (the digits size): parity does not need a trained model."""
    return tiny("rn26-tm", 16)


def _inputs(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 1, 16, 16)).astype(np.float32)


def test_event_timer_sees_more_gpu_work_take_longer():
    a = torch.randn(2048, 2048, device="cuda")
    small_work, large_work = lambda: a[:64, :64] @ a[:64, :64], lambda: [a @ a for _ in range(20)]
    small_work(), large_work()  # CUDA loads each kernel on its first use: not what this test times
    small, large = event_timer(small_work), event_timer(large_work)
    assert 0 < small < large


def test_cuda_graph_replays_what_eager_computes_for_each_batch_size(small_ckpt):
    module = small_ckpt.build_model().float().cuda().eval()
    graph, eager = CudaGraphSession(module), TorchSession(module, "cuda")
    for batch, seed in ((1, 0), (8, 1), (8, 2)):  # the second batch of 8 replays the captured graph
        x = _inputs(batch, seed)
        np.testing.assert_allclose(graph.fetch(graph.bind(x)()), eager.fetch(eager.bind(x)()), atol=1e-4, rtol=1e-4)


@needs_ort_cuda
def test_onnxruntime_cuda_io_binding_and_cuda_graph_match_the_cpu(small_ckpt):
    proto = to_model_proto(small_ckpt, ExportOptions())
    cpu, io_bound, graph = (OrtSession(proto, ["CPUExecutionProvider"]), OrtIoBindingSession(proto),
                            OrtCudaGraphSession(proto))
    on_cuda, nodes = io_bound.note.split()[0].split("/")
    assert on_cuda == nodes, io_bound.note  # every node ran on the GPU
    for batch, seed in ((1, 0), (16, 1), (16, 2), (1, 3)):  # revisits a captured shape with new data
        x = _inputs(batch, seed)
        expected = cpu.fetch(cpu.bind(x)())
        np.testing.assert_allclose(io_bound.fetch(io_bound.bind(x)()), expected, atol=1e-3, rtol=1e-3)
        call = graph.bind(x)
        for _ in range(3):  # onnxruntime captures on a later run than the first: check the replays too
            np.testing.assert_allclose(graph.fetch(call()), expected, atol=1e-3, rtol=1e-3)


@needs_ort_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_check_on_the_cuda_provider_passes_at_the_precision_tolerances(trained, tmp_path, precision):
    ckpt, _ = trained("rn26-tm")
    onnx_path = export_onnx(ckpt, tmp_path / f"{precision}.onnx", ExportOptions(precision=precision))
    # 320 test images: at 99.5 % one flip may happen (128 images would demand every one)
    report = check(ckpt, onnx_path, CheckOptions(device="cuda", data="digits", batches=(64,), iterations=5))
    assert report.device == "cuda" and report.passed, report.to_markdown()
    assert report.outputs["logits"]["top1_agreement"] >= 0.995


@needs_ort_cuda
def test_bench_on_cuda_runs_every_gpu_backend_and_judges_them_against_cpu_pytorch(small_ckpt):
    names = ("pytorch", "pytorch-cuda-graph", "torch-compile-reduce-overhead", "ort-fp32", "ort-fp32-cuda-graph",
             "ort-fp16", "ort-int8")
    result = run(small_ckpt, BenchOptions(device="cuda", backends=names, batches=(1, 4), min_time=0.0,
                                          min_iterations=3, warmup=1, accuracy_limit=64, show_progress=False))
    assert result.machine["gpu"] == torch.cuda.get_device_name()
    assert result.data["agreement_with"] == "PyTorch eager on the CPU"
    for b in result.backends:
        assert b.status == "ok", (b.name, b.note)
        assert [s["batch"] for s in b.latency] == [1, 4]
        assert all(s["p50_ms"] > 0 for s in b.latency)
        assert b.agreement >= (0.95 if b.precision == "int8" else 0.98), (b.name, b.agreement)
    assert "convolutions" in result.backend("ort-int8").note  # says in what arithmetic the QDQ graph ran


def _polygraphy(command: str, cwd) -> subprocess.CompletedProcess:
    """A reproduce line as a user would run it: its VAR=value prefix in the environment, polygraphy's CLI."""
    words = shlex.split(command)
    env = dict(os.environ)
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "polygraphy", command
    main = "import sys; from polygraphy.tools import main; sys.argv[0] = 'polygraphy'; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", main, *words[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@needs_ort_cuda
def test_optimize_on_cuda_picks_the_fastest_passing_candidate_and_names_its_provider_settings(small_ckpt, tmp_path):
    out = tmp_path / "out"
    assert main(["optimize", str(small_ckpt.path), "--device", "cuda", "--quick", "--batch", "1,8", "--window-s",
                 "0.05", "--profile-s", "4", "--accuracy-limit", "64", "--quiet", "--out", str(out)]) == 0
    status = json.loads((out / "status.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    by_name = {c["name"]: c for c in status["candidates"]}
    default = status["candidates"][0]
    assert default["name"] == "normalized-fp32" and default["default_export"] and default["status"] == "ok", default
    assert (default["provider"], default["provider_options"]) == ("CUDAExecutionProvider", {"use_tf32": "0"})
    for name in ("normalized-fp32-cuda-graph", "normalized-fp32-cuda-graph-nhwc"):
        assert by_name[name]["status"] == "ok", by_name[name]
    for name in ("normalized-fp16", "normalized-fp16-cuda-graph"):  # an untrained model's FP16 may flip a class
        assert by_name[name]["steps"][0]["status"] == "ok" and by_name[name]["errors"], by_name[name]
    assert by_name["normalized-int8-tensorrt"]["status"] == "skipped"  # the CUDA provider's INT8: never tried
    for c in status["candidates"]:
        assert c["runtime"] != "openvino"
        if c["status"] == "ok":
            assert [s["batch"] for s in c["latency"]] == [1, 8] and all(s["p50_ms"] > 0 for s in c["latency"])
    env = status["environment"]
    assert env["gpu"] == torch.cuda.get_device_name() and env["cuda"] and env["onnxruntime_cuda"]
    passing = {c["name"]: c["latency"][0]["p50_ms"] for c in status["candidates"] if c["status"] == "ok"}
    decision = status["decision"]
    assert decision["chosen"] == min(passing, key=passing.get)
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    choice = json.loads(meta[CHOICE_KEY])
    assert choice["chosen"] == decision["chosen"]
    assert choice["provider_options"] == by_name[decision["chosen"]]["provider_options"]
    # the FP32 line re-checks parity on the CUDA provider without tmdeploy, TF32 off by NVIDIA's variable
    line = default["reproduce"]["command"]
    assert line.startswith("NVIDIA_TF32_OVERRIDE=0 polygraphy run ") and "--providers cuda" in line
    done = _polygraphy(line, out)
    assert done.returncode == 0 and "PASSED" in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
