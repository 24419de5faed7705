"""`tmdeploy serve`: the real command, a real Triton server (PyTriton) on 127.0.0.1, concurrent HTTP clients."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from test_runtime import normalized, pixels, write_model

from tmdeploy import kserve, serve
from tmdeploy.cli import main
from tmdeploy.engines.triton import model_signature
from tmdeploy.errors import UsageError

needs_pytriton = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                    reason="nvidia-pytriton is not installed (pip install 'tmdeploy[serve]')")


def infer(url, model, x, timeout=60.0, compression=None):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    try:
        tensor = httpclient.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor], request_compression_algorithm=compression)
        return result.as_numpy("logits"), result.as_numpy("patch_logits")
    finally:
        client.close()


def metric(text, name, model):
    found = re.search(rf'^{name}{{model="{model}",version="1"}} (\d+)', text, re.MULTILINE)
    return int(found.group(1))


def test_library_path_puts_the_running_python_first():
    assert serve.library_path_with("/py/lib", None) == "/py/lib"
    assert serve.library_path_with("/py/lib", f"/a{os.pathsep}/py/lib{os.pathsep}/b") == os.pathsep.join(["/py/lib", "/a", "/b"])


# In its own interpreter: the signal goes to a process of its own, not to pytest's with whatever earlier tests
# left in it (OpenVINO's stale alternate signal stack once made such a signal a SIGSEGV: test_openvino.py)
DEFERRED_SIGNAL = ("import os, signal, time\nfrom tmdeploy import signals\n"
                   "before, reached = signal.getsignal(signal.SIGTERM), False\ntry:\n"
                   "    with signals.handled():\n        with signals.deferred():\n"
                   "            os.kill(os.getpid(), signal.SIGTERM)\n"
                   "            time.sleep(0.05)  # the handler runs here: it must only note the signal\n"
                   "            reached = True\n"
                   "except signals.Interrupted as err:\n"
                   "    print(reached, err.exit_code, signal.getsignal(signal.SIGTERM) is before)\n")


def test_a_signal_while_deferred_is_raised_when_the_block_ends():
    """What serve does around the start of tritonserver, so that the signal cannot fall between the fork and
    the handle PyTriton keeps (and stop() needs); handled() then puts back the handler that was there."""
    result = subprocess.run([sys.executable, "-c", DEFERRED_SIGNAL], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "143", "True"], result.stderr


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


def triton_processes(pid):
    """The tritonserver and Python stub processes a `tmdeploy serve` of ``pid`` started, wherever they were
    reparented: PyTriton puts 'pytrtion{pid}-' (its shared-memory prefix) on both command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"pytrtion{pid}-".encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def cmdline(pid):
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def tritonserver_of(pids):
    (server,) = [p for p in pids if b"bin/tritonserver" in cmdline(p)]
    return server


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def descendants(pid):
    """Every process below ``pid`` now: tritonserver, its stub, PyTriton's multiprocessing manager and tracker."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        below = todo.pop()
        children = [child for child, parent in parents.items() if parent == below]
        found += children
        todo += children
    return found


def running_of(pids):
    """Those of ``pids`` still running (a zombie has ended; it only waits for its parent to reap it)."""
    def runs(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    return [pid for pid in pids if runs(pid)]


def wait_gone(pids, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while running_of(pids) and time.monotonic() < deadline:
        time.sleep(0.2)


class Served:
    """A `tmdeploy serve` subprocess; stdout (Triton's log) and stderr in files under ``folder``."""

    def __init__(self, folder, model, *options):
        self.port = free_port_run()
        self.url = f"127.0.0.1:{self.port}"
        self.out, self.err = folder / "stdout.log", folder / "stderr.log"
        command = [sys.executable, "-m", "tmdeploy", "serve", str(model), "--port", str(self.port), *options]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(command, cwd=Path(__file__).parents[1], stdout=out, stderr=err)

    def wait_ready(self, model="tiny"):
        wait_ready(self.proc, f"http://{self.url}/v2/models/{model}/ready")

    def stderr(self):
        return self.err.read_text().splitlines()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the request tests, on the tiny model with patch logits, max batch 16; the last test
    using it stops it with SIGTERM."""
    folder = tmp_path_factory.mktemp("served")
    server = Served(folder, write_model(folder / "tiny.onnx", patch=True), "--max-batch", "16",
                    "--max-queue-delay-us", "20000")
    server.model = folder / "tiny.onnx"
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def post(url, body, headers=None, path="/v2/models/tiny/infer"):
    """(status, parsed JSON answer) of one HTTP POST."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{url}{path}", data=data,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def images(shape, values, datatype="FP32", **extra):
    return {"inputs": [{"name": "images", "shape": shape, "datatype": datatype, "data": values, **extra}]}


GOOD = images([2, 1, 8, 8], normalized(pixels(n=2, seed=5)).ravel().tolist())
BAD_REQUESTS = {  # what the front must refuse with a 400; each one before it reaches Triton's allocator
    "2^31 batch, 64 values": images([2**31, 1, 8, 8], [0.0] * 64),
    "2^63-1 elements, rank 1": images([2**63 - 1], [0.0] * 64),
    "2^63-1 in a dimension": images([1, 1, 8, 2**63 - 1], [0.0] * 64),
    "2^64 wraps to 0": images([1, 1, 2**32, 2**32], [0.0] * 64),
    "beyond max batch": images([17, 1, 8, 8], [0.0] * 64 * 17),
    "batch 0": images([0, 1, 8, 8], []),
    "wrong channels": images([1, 3, 8, 8], [0.0] * 192),
    "too few values": images([2, 1, 8, 8], [0.0] * 127),
    "nested too many": images([1, 1, 8, 8], [[0.0] * 64, [1.0]]),
    "string values": images([1, 1, 8, 8], ["0"] * 64),
    "wrong datatype": images([1, 1, 8, 8], [0] * 64, datatype="UINT8"),
    "bool shape": images([True, 1, 8, 8], [0.0] * 64),
    "unknown input": {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]},
    "input twice": {"inputs": GOOD["inputs"] * 2},
    "no inputs": {"outputs": []},
    "shared memory": images([1, 1, 8, 8], None, parameters={"shared_memory_region": "r"}),
}


def test_check_request_takes_the_good_and_names_what_is_wrong_with_the_bad(tmp_path):
    contract = kserve.Contract.of("tiny", model_signature(write_model(tmp_path / "tiny.onnx")), 16)
    kserve.check_request(contract, json.dumps(GOOD).encode(), None)
    messages = {}
    for what, body in BAD_REQUESTS.items():
        with pytest.raises(kserve.BadRequest) as refused:
            kserve.check_request(contract, json.dumps(body).encode(), None)
        messages[what] = str(refused.value)
    assert messages["2^31 batch, 64 values"] == ("input 'images': batch 2147483648 is outside 1..16 "
                                                 "(the server's max batch)")
    assert messages["2^63-1 elements, rank 1"] == "input 'images': shape has rank 1; the model takes [batch, 1, 8, 8]"
    assert messages["too few values"] == "input 'images': 127 values for shape [2, 1, 8, 8], which holds 128"
    assert messages["wrong datatype"] == "input 'images': datatype 'UINT8'; the model takes FP32"
    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    kserve.check_request(contract, header + bytes(256), len(header))
    smuggled = b'{"inputs": [{"name": "images", "shape": [9223372036854775807], "shape": [1, 1, 8, 8], ' \
               b'"datatype": "FP32", "data": [' + b", ".join([b"0.0"] * 64) + b']}]}'
    for body, length, message in ((smuggled, None, "names a key twice"),
                                  (json.dumps(GOOD).encode("utf-16"), None, "not JSON"),
                                  (header + bytes(255), len(header), "declare 256 binary bytes; the request carries"),
                                  (header.replace(b"256", b"1024"), len(header) + 1, "binary_data_size 1024 is not 64"),
                                  (header, len(header) + 1, "outside the body's"), (b"{", None, "not JSON")):
        with pytest.raises(kserve.BadRequest, match=message):
            kserve.check_request(contract, body, length)
    # a baked graph takes uint8 pixels N×H×W×C: values must be bytes
    baked = kserve.Contract.of("tiny", model_signature(write_model(tmp_path / "baked.onnx", baked=True)), 4)
    kserve.check_request(baked, json.dumps(images([1, 8, 8, 1], [255] * 64, "UINT8")).encode(), None)
    with pytest.raises(kserve.BadRequest, match="not a number of the input's datatype"):
        kserve.check_request(baked, json.dumps(images([1, 8, 8, 1], [256] * 64, "UINT8")).encode(), None)
    # where a graph leaves H and W open, the count alone bounds the shape: 2^80 elements declared, 64 sent
    open_hw = kserve.Contract("m", (kserve.InputRule("images", "FP32", (1, -1, -1), 4),), 4)
    kserve.check_request(open_hw, json.dumps(images([1, 1, 8, 8], [0.0] * 64)).encode(), None)
    for shape, message in (([1, 1, 2**40, 2**40], f"64 values for shape .* which holds {2**80}"),
                           ([1, 1, 0, 64], "does not fit the model's \\[batch, 1, any, any\\]")):
        with pytest.raises(kserve.BadRequest, match=message):
            kserve.check_request(open_hw, json.dumps(images(shape, [0.0] * 64)).encode(), None)


@needs_pytriton
@pytest.mark.timeout(300)
def test_requests_that_do_not_fit_the_model_are_400_and_the_server_keeps_serving(served):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    expected = ort.InferenceSession(str(served.model), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": np.float32(GOOD["inputs"][0]["data"]).reshape(2, 1, 8, 8)})[0]
    for what, body in BAD_REQUESTS.items():
        status, answer = post(served.url, body)
        assert status == 400 and list(answer) == ["error"] and "\n" not in answer["error"], (what, status, answer)
        status, answer = post(served.url, GOOD)  # the server is still there, and right
        assert status == 200, (what, answer)
    assert_close(np.float32(answer["outputs"][0]["data"]).reshape(2, 3), expected)
    header = json.dumps({"inputs": [{"name": "images", "shape": [2**31, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    assert post(served.url, header + bytes(256), {"Inference-Header-Content-Length": str(len(header))})[0] == 400
    assert post(served.url, b"x" * 64, {"Content-Length": str(10**12)})[0] == 413
    assert post(served.url, GOOD, path="/v2/models/tiny/generate")[0] == 404
    bad = gzip.compress(json.dumps(BAD_REQUESTS["2^63-1 elements, rank 1"]).encode())
    assert post(served.url, bad, {"Content-Encoding": "gzip"})[0] == 400
    shape = '"shape": [2, 1, 8, 8]'
    smuggled = json.dumps(GOOD).replace(shape, f'"shape": [{2**62}], {shape}')
    assert post(served.url, smuggled.encode())[0] == 400  # Triton's parser may take the first "shape"
    x = np.float32(GOOD["inputs"][0]["data"]).reshape(2, 1, 8, 8)
    for algorithm in ("gzip", "deflate"):
        assert_close(infer(served.url, "tiny", x, compression=algorithm)[0], expected)
    # Triton's own HTTP endpoint: on the loopback, behind the front
    arguments = cmdline(tritonserver_of(triton_processes(served.proc.pid))).split(b"\0")
    assert arguments[arguments.index(b"--http-address") + 1] == b"127.0.0.1"
    assert int(arguments[arguments.index(b"--http-port") + 1]) != served.port
    # gRPC reaches Triton directly: its frontend takes the values as sent, and its core refuses the shape
    with grpc.insecure_channel(f"127.0.0.1:{served.port + 1}") as channel:
        # [2^62, 1, 8, 8] FP32 is 2^70 bytes, 0 once wrapped to 64 bits: sent with 0 bytes
        for shape, size in (([2**63 - 1], 256), ([2**31, 1, 8, 8], 256), ([2**62, 1, 8, 8], 0)):
            request = service_pb2.ModelInferRequest(model_name="tiny")
            request.inputs.add(name="images", datatype="FP32", shape=shape)
            request.raw_input_contents.append(bytes(size))
            with pytest.raises(grpc.RpcError, match="unexpected shape|byte size mismatch"):
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert post(served.url, GOOD)[0] == 200


@needs_pytriton
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_serves_concurrent_requests_batched_like_onnxruntime_and_stops_on_sigterm(served):
    import tritonclient.http as httpclient

    session = ort.InferenceSession(str(served.model), providers=["CPUExecutionProvider"])
    requests = [normalized(pixels(n=1 + i % 4, seed=i)) for i in range(32)]
    bad = normalized(pixels(n=3, seed=99))
    bad[1, 0, 0, 0] = np.nan
    url, port, proc = served.url, served.port, served.proc
    before = urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/metrics", timeout=30).read().decode()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda x: infer(url, "tiny", x), [*requests, bad]))
    with pytest.raises(httpclient.InferenceServerException, match="images"):
        infer(url, "tiny", np.zeros((2, 3, 8, 8), np.float32))
    stats = urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/metrics", timeout=30).read().decode()
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, served.stderr()
    assert served.stderr()[0].startswith("serving tiny at http://127.0.0.1:")
    assert served.stderr()[1:] == ["tmdeploy: error: interrupted by SIGTERM"]
    for x, (logits, patch_logits) in zip(requests, answers):
        expected_logits, expected_patch = session.run(["logits", "patch_logits"], {"images": x})
        np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(patch_logits, expected_patch, rtol=1e-5, atol=1e-5)
    bad_logits = answers[-1][0]  # NaN in, NaN out for that row only; the rest of its batch is unharmed
    assert np.isnan(bad_logits[1]).all() and np.isfinite(bad_logits[[0, 2]]).all()
    count = metric(stats, "nv_inference_count", "tiny") - metric(before, "nv_inference_count", "tiny")
    executions = metric(stats, "nv_inference_exec_count", "tiny") - metric(before, "nv_inference_exec_count", "tiny")
    assert count == sum(len(x) for x in requests) + len(bad)
    assert executions < len(requests)  # Triton batched requests together
    with pytest.raises(OSError):  # the Triton process went with it
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert len(children) >= 4 and running_of(children) == [] and triton_processes(proc.pid) == []


@needs_pytriton
@pytest.mark.timeout(300)
def test_cli_exits_1_in_one_line_when_triton_dies(tmp_path):
    server = Served(tmp_path, write_model(tmp_path / "tiny.onnx"))
    try:
        server.wait_ready()
        children = descendants(server.proc.pid)
        os.kill(tritonserver_of(triton_processes(server.proc.pid)), signal.SIGKILL)  # how a crash looks to us
        assert server.proc.wait(timeout=120) == 1
    finally:
        server.stop()
    assert server.stderr()[-1] == ("tmdeploy: error: the Triton server stopped by itself (crashed or killed); "
                                   "the model is no longer served")
    assert not any("Traceback" in line or line.startswith("tmdeploy:") for line in server.stderr()[:-1])
    wait_gone(children)  # the stub sees its server gone and ends by itself
    assert len(children) >= 4 and running_of(children) == [] and triton_processes(server.proc.pid) == []


# Triton's loopback port, taken by another socket after serve chose it: tritonserver then fails for real. In its
# own interpreter, as `tmdeploy serve` runs: forking tritonserver from pytest's many-threaded process is not that.
PORT_TAKEN = ("import socket, sys\nfrom tmdeploy import serve\nfrom tmdeploy.cli import main\n"
              "taken = socket.socket()\ntaken.bind(('127.0.0.1', 0))\n"
              "serve._loopback_port = lambda: taken.getsockname()[1]\nsys.exit(main(sys.argv[1:]))\n")


@needs_pytriton
@pytest.mark.timeout(300)
def test_triton_that_cannot_start_is_one_line_at_once(tmp_path):
    model = write_model(tmp_path / "tiny.onnx")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", PORT_TAKEN, "serve", str(model), "--port", str(free_port_run())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert time.monotonic() - start < 60  # not PyTriton's two minutes of polling a server that has exited
    assert stderr.splitlines()[-1] == "tmdeploy: error: tritonserver exited while starting (its log is on stdout)"
    assert triton_processes(proc.pid) == []


@needs_pytriton
@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum, when", [(signal.SIGTERM, "tritonserver started"),
                                          (signal.SIGINT, "the model's stub started")])
def test_a_signal_while_starting_stops_every_child_and_exits_in_one_line(tmp_path, signum, when):
    server = Served(tmp_path, write_model(tmp_path / "tiny.onnx"))
    wanted = 1 if signum == signal.SIGTERM else 2
    try:
        deadline = time.monotonic() + 120
        while len(triton_processes(server.proc.pid)) < wanted and time.monotonic() < deadline:
            assert server.proc.poll() is None, server.stderr()
            time.sleep(0.02)
        children = descendants(server.proc.pid)
        server.proc.send_signal(signum)
        assert server.proc.wait(timeout=120) == 128 + signum, server.stderr()
    finally:
        server.stop()
    assert server.stderr() == [f"tmdeploy: error: interrupted by {signal.Signals(signum).name}"]  # no traceback
    assert len(children) >= wanted and running_of(children) == [] and triton_processes(server.proc.pid) == []
