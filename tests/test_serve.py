"""`tmdeploy serve`: the real command, a real Triton server (PyTriton) on 127.0.0.1, concurrent HTTP clients."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from test_runtime import normalized, pixels, write_model

from tmdeploy import serve
from tmdeploy.cli import main
from tmdeploy.errors import UsageError

needs_pytriton = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                    reason="nvidia-pytriton is not installed (pip install 'tmdeploy[serve]')")


def infer(url, model, x, timeout=60.0):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    try:
        tensor = httpclient.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
        return result.as_numpy("logits"), result.as_numpy("patch_logits")
    finally:
        client.close()


def metric(text, name, model):
    found = re.search(rf'^{name}{{model="{model}",version="1"}} (\d+)', text, re.MULTILINE)
    return int(found.group(1))


def test_library_path_puts_the_running_python_first():
    assert serve.library_path_with("/py/lib", None) == "/py/lib"
    assert serve.library_path_with("/py/lib", f"/a{os.pathsep}/py/lib{os.pathsep}/b") == os.pathsep.join(["/py/lib", "/a", "/b"])


def test_bad_options_are_usage_errors(tmp_path):
    model = write_model(tmp_path / "tiny.onnx")
    with pytest.raises(UsageError, match="max_batch_size 0"), serve.running(model, max_batch=0):
        pass
    with pytest.raises(UsageError, match="port 70000"), serve.running(model, port=70000):
        pass


def test_cli_reports_bad_options_as_usage_errors(tmp_path, capsys):
    model = write_model(tmp_path / "tiny.onnx")
    assert main(["serve", str(model), "--max-batch", "0"]) == 2
    assert main(["serve", str(model), "--name", "../x"]) == 2
    assert main(["serve", str(tmp_path / "absent.onnx")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["tmdeploy: error: max_batch_size 0: expected an integer in 1..4096, the exported graphs' batch limit",
                   "tmdeploy: error: model name '../x': use letters, digits, '.', '_' and '-' (not starting with '.')",
                   f"tmdeploy: error: ONNX file not found: {tmp_path / 'absent.onnx'}"]


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is not None, reason="nvidia-pytriton is installed here")
def test_cli_without_pytriton_names_the_install_step(tmp_path, capsys):
    assert main(["serve", str(write_model(tmp_path / "tiny.onnx"))]) == 1
    assert capsys.readouterr().err.strip().endswith('pip install "tmdeploy[serve]" (nvidia-pytriton)')


def free_port_run(n=3):
    """A port P with P..P+n-1 free: the server takes HTTP on P, gRPC on P+1 and metrics on P+2."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            with contextlib.ExitStack() as stack:
                for p in range(port, port + n):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def wait_ready(proc, url, deadline_s=150):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server not ready (exit status {proc.poll()})")


@needs_pytriton
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_serves_concurrent_requests_batched_like_onnxruntime_and_stops_on_sigterm(tmp_path):
    import tritonclient.http as httpclient

    model = write_model(tmp_path / "tiny.onnx", patch=True)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    requests = [normalized(pixels(n=1 + i % 4, seed=i)) for i in range(32)]
    bad = normalized(pixels(n=3, seed=99))
    bad[1, 0, 0, 0] = np.nan
    port = free_port_run()
    url = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "tmdeploy", "serve", str(model), "--port", str(port), "--max-batch", "16",
               "--max-queue-delay-us", "20000"]
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=Path(__file__).parents[1], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, f"http://{url}/v2/models/tiny/ready")
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda x: infer(url, "tiny", x), [*requests, bad]))
        with pytest.raises(httpclient.InferenceServerException, match="images"):
            infer(url, "tiny", np.zeros((2, 3, 8, 8), np.float32))
        stats = urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/metrics", timeout=30).read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "serving tiny at http://127.0.0.1:" in log.read_text()
    for x, (logits, patch_logits) in zip(requests, answers):
        expected_logits, expected_patch = session.run(["logits", "patch_logits"], {"images": x})
        np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(patch_logits, expected_patch, rtol=1e-5, atol=1e-5)
    bad_logits = answers[-1][0]  # NaN in, NaN out for that row only; the rest of its batch is unharmed
    assert np.isnan(bad_logits[1]).all() and np.isfinite(bad_logits[[0, 2]]).all()
    assert metric(stats, "nv_inference_count", "tiny") == sum(len(x) for x in requests) + len(bad)
    assert metric(stats, "nv_inference_exec_count", "tiny") < len(requests)  # Triton batched requests together
    with pytest.raises(OSError):  # the Triton process went with it
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
