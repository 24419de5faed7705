"""OpenVINO, the optional runtime that reads the ONNX file itself: real OpenVINO in bench, check and optimize,
and the install hint when it is missing (the test extra installs it, so these run in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tmdeploy.bench.backends import Context, by_name, default_names, predict_all

ROOT = Path(__file__).resolve().parent.parent


def _python(*args, cwd=None) -> subprocess.CompletedProcess:
    """This Python on ``args`` in a fresh process (which imports this checkout's tmdeploy)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny_ckpt(tiny):
    return tiny("rn26")


def test_bench_backend_logits_match_onnxruntime(tiny_ckpt):
    assert "openvino-fp32" in default_names("cpu")
    ctx = Context(tiny_ckpt, "cpu", (4,), threads=1)
    images = np.random.default_rng(0).standard_normal((10, *tiny_ckpt.card.input_size)).astype(np.float32)
    try:
        openvino, ort = (by_name(name).build(ctx) for name in ("openvino-fp32", "ort-fp32"))
        ours, theirs = (predict_all(s, images, 4) for s in (openvino, ort))
    finally:
        ctx.close()
    assert ours.shape == (10, 10) and np.abs(ours - theirs).max() < 1e-4
    assert openvino.artifact_bytes == ort.artifact_bytes  # the same ONNX file ships


def test_bench_without_openvino_skips_it_with_the_install_hint(tiny_ckpt):
    code = (f"import sys, json; sys.modules['openvino'] = None\n"
            f"from tmdeploy import checkpoint\nfrom tmdeploy.bench import BenchOptions, run\n"
            f"r = run(checkpoint.load({str(tiny_ckpt.path)!r}), BenchOptions(backends=('pytorch', 'openvino-fp32'), "
            f"batches=(1,), data=None, min_time=0.0, min_iterations=2, warmup=1, threads=1, show_progress=False))\n"
            f"b = r.backend('openvino-fp32'); print(json.dumps([b.status, b.note]))")
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    status, note = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == "skipped"
    assert note == 'OpenVINO is not installed: pip install "tmdeploy[openvino]" (openvino)'


def test_check_runtime_openvino_passes_on_an_exported_model(tiny_ckpt, tmp_path, capsys):
    from tmdeploy.cli import main
    from tmdeploy.export import export_onnx

    model = export_onnx(tiny_ckpt, tmp_path / "model.onnx")
    assert main(["check", str(tiny_ckpt.path), str(model), "--runtime", "openvino", "--seed", "3"]) == 0
    assert "openvino on CPU" in capsys.readouterr().out
    report = json.loads((tmp_path / "model.check.json").read_text())
    assert report["runtime"] == "openvino" and report["passed"]
    assert report["outputs"]["logits"]["max_abs_error"] < 1e-4  # FP32 arithmetic: OpenVINO's bf16 default gave 6e-3


def test_check_runtime_is_validated_before_anything_runs(tiny_ckpt, tmp_path, capsys):
    from tmdeploy.cli import main

    assert main(["check", str(tiny_ckpt.path), str(tmp_path / "none.onnx"), "--runtime", "tvm"]) == 2
    assert "--runtime" in capsys.readouterr().err


def test_optimize_lists_openvino_candidates_with_their_numbers(tiny, tmp_path):
    from tmdeploy.cli import main

    ckpt, out = tiny("rn26-tm"), tmp_path / "out"
    assert main(["optimize", str(ckpt.path), "--quick", "--threads", "1", "--batch", "1,4", "--precisions", "fp32,fp16",
                 "--window-s", "0.05", "--profile-s", "1", "--accuracy-limit", "32", "--quiet", "--out", str(out)]) == 0
    status = json.loads((out / "status.json").read_text())
    assert status["options"]["runtimes"] == ["onnxruntime", "openvino"] and status["environment"]["openvino"]
    found = {c["name"]: c for c in status["candidates"] if c["runtime"] == "openvino"}
    assert set(found) == {"normalized-fp32-openvino", "normalized-fp16-openvino"}
    for c in found.values():
        assert c["status"] == "ok" and c["build_s"] > 0 and c["size_mb"] > 0
        assert c["errors"]["max_abs_error"] <= c["tolerance"]["atol"] and c["accuracy"]["agreement"] >= 0.99
        assert [s["batch"] for s in c["latency"]] == [1, 4] and all(s["p50_ms"] > 0 for s in c["latency"])
        assert "polygraphy has no OpenVINO runner" in c["reproduce"]["why_not_polygraphy"]
    # the recorded reproduction line re-checks OpenVINO's parity, run as written in the output folder
    argv = found["normalized-fp32-openvino"]["reproduce"]["command"].split()
    assert argv[:2] == ["tmdeploy", "check"] and argv[-6:-4] == ["--seed", "0"]
    done = _python("-m", "tmdeploy", *argv[1:], cwd=out)
    assert done.returncode == 0 and "PASS" in done.stdout and "openvino on CPU" in done.stdout, done.stderr
    assert "polygraphy has no OpenVINO runner" in (out / "report.md").read_text()


# What a long-lived process does after optimize: take a signal. It was SIGSEGV before any handler ran: OpenVINO's
# CPU plugin registers an alternate signal stack in the compiling thread and may free it while still registered
# (tmdeploy.signals.alternate_stack_kept). In its own interpreter, so that a regression fails this test alone.
SIGNAL_AFTER_OPTIMIZE = ("import os, signal, sys, time\nfrom tmdeploy.cli import main\n"
                         "assert main(sys.argv[1:]) == 0\ngot = []\n"
                         "signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))\n"
                         "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(0.1)\nprint('handled', got)\n")


@pytest.mark.slow
def test_a_signal_after_optimize_ran_openvino_candidates_is_handled(tiny, tmp_path):
    result = _python("-c", SIGNAL_AFTER_OPTIMIZE, "optimize", str(tiny("rn26-tm").path), "--quick", "--threads", "1",
                     "--batch", "1,4", "--precisions", "fp32,fp16", "--runtimes", "openvino", "--window-s", "0.05",
                     "--profile-s", "1", "--accuracy-limit", "32", "--quiet", "--out", str(tmp_path / "out"))
    assert result.returncode == 0 and "handled [15]" in result.stdout, result.stderr[-2000:]


def test_optimize_runtimes_openvino_without_it_is_the_install_hint(tiny_ckpt, tmp_path):
    code = ("import sys; sys.modules['openvino'] = None\nfrom tmdeploy.cli import main\n"
            f"sys.exit(main(['optimize', {str(tiny_ckpt.path)!r}, '--runtimes', 'openvino', '--out', "
            f"{str(tmp_path / 'out')!r}]))")
    done = _python("-c", code)
    assert done.returncode == 1 and not (tmp_path / "out").exists()
    assert done.stderr.strip().splitlines()[-1] == (
        'tmdeploy: error: OpenVINO is not installed: pip install "tmdeploy[openvino]" (openvino)')
