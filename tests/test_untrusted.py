"""Untrusted input, round two: one test or more per class of failure, each through the real code path.

Classes: values checked as the graph holds them (after the float32 cast); every error ours (one ONNX
loader); terminal-safe text; output paths; data faults; option values; torch tensors in ``predict``;
``info`` without external data; ``serve`` on a busy port; SIGINT/SIGTERM; strict JSON reports;
calibration data from the card; one list of engine suffixes; dependency floors.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from helpers import (ENV, ESC, MISMATCHED_GRAPHS, mismatched_graph, one_line_error, partly_written, snapshot, temp_files,
                     tmdeploy)
from test_runtime import write_model

from tmdeploy import checkpoint, data, models, onnxfile, runtime
from tmdeploy.engines import triton
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.export import graph, metadata
from tmdeploy.export.to_onnx import calibration_data
from tmdeploy.sanitize import clean
from tmdeploy.verify import CheckReport
from tmdeploy.verify.stats import DEFAULT_TOLERANCES

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A small rn26 checkpoint trained on nothing, and its real ONNX export (made once)."""
    root = tmp_path_factory.mktemp("untrusted")
    torch.manual_seed(0)
    model = models.create("rn26", num_classes=len(CLASSES), in_chans=1).eval()
    card = checkpoint.card_for(model, CLASSES, [0.5], [0.25], input_size=(1, 16, 16),
                               extra={"train": {"data": "digits"}})
    good = checkpoint.save(root / "good.pt", model, card)
    result = tmdeploy("export", good, "--out", root / "good.onnx")
    assert result.returncode == 0, result.stderr
    return root


def save_with(path: Path, work: Path, state_changes=None, **card_changes) -> Path:
    """good.pt with some weights or card fields replaced, saved as a plain weights_only-loadable file."""
    loaded = checkpoint.load(work / "good.pt")
    state = {k: v.clone() for k, v in loaded.state_dict.items()}
    state.update(state_changes or {})
    torch.save({**checkpoint.card_to_dict(replace(loaded.card, **card_changes)), "state_dict": state}, path)
    return path


def run_all(jobs: dict) -> dict:
    """Run CLI invocations two at a time (each pays for importing torch); {name: CompletedProcess}."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(tmdeploy, *argv, cwd=cwd) for name, (cwd, argv) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


# ---- values as the graph holds them -------------------------------------------------------------------


def test_values_are_checked_after_the_float32_cast(work, tmp_path):
    d = tmp_path
    state = checkpoint.load(work / "good.pt").state_dict
    huge = state["head.fc.weight"].double()
    huge[0, 0] = 1e300  # finite as float64, Inf as float32
    var_name = next(k for k in state if k.endswith("running_var"))
    negative = state[var_name].clone()
    negative[0] = -1.0
    cases = {
        "float64-overflow": (d, ["export", save_with(d / "huge.pt", work, {"head.fc.weight": huge}), "--out", "a.onnx"]),
        "negative-variance": (d, ["export", save_with(d / "var.pt", work, {var_name: negative}), "--out", "b.onnx"]),
        "std-zero-in-float32": (d, ["export", save_with(d / "std.pt", work, std=[1e-300]), "--bake-preprocess",
                                    "--out", "c.onnx"]),
        "mean-inf-in-float32": (d, ["export", save_with(d / "mean.pt", work, mean=[1e300]), "--out", "e.onnx"]),
    }
    before = snapshot(d)
    results = run_all(cases)
    one_line_error(results["float64-overflow"], 1, "weight 'head.fc.weight' contains NaN or Inf values once cast "
                                                   "to float32")
    one_line_error(results["negative-variance"], 1, f"BatchNorm running variance '{var_name}' has negative values")
    one_line_error(results["std-zero-in-float32"], 1, "std must be positive and finite as float32")
    one_line_error(results["mean-inf-in-float32"], 1, "mean must be finite as float32")
    assert snapshot(d) == before  # nothing written


def test_runtime_load_checks_metadata_after_the_cast(work, tmp_path):
    model = onnx.load(str(work / "good.onnx"))
    meta = metadata.ModelMetadata.from_props(metadata.props(model))
    for field, value, message in (("std", [1e-300], "std must be positive and finite as float32"),
                                  ("mean", [1e39], "mean must be finite as float32"),
                                  ("input_size", [1, 100_000, 100_000], "input_size .* is out of range")):
        changed = copy.deepcopy(model)
        metadata.write(changed, replace(meta, **{field: value}))
        path = tmp_path / f"{field}.onnx"
        onnx.save(changed, str(path))
        with pytest.raises(TmdeployError, match=message):
            runtime.load(path)


def test_the_exported_graph_is_checked_for_what_it_really_holds(work):
    model = onnx.load(str(work / "good.onnx"))
    graph.check_finite_values(model)  # a good export passes
    init = model.graph.initializer[0]
    values = numpy_helper.to_array(init).copy()
    values.flat[0] = np.inf
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    with pytest.raises(TmdeployError, match=f"would hold NaN or Inf in '{init.name}'"):
        graph.check_finite_values(model)


def test_check_on_a_graph_giving_inf_prints_no_numpy_warnings(work, tmp_path):
    model = onnx.load(str(work / "good.onnx"))
    bias = next(t for t in model.graph.initializer if t.name.endswith("head.fc.bias"))
    values = numpy_helper.to_array(bias).copy()
    values[0] = np.inf
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(tmp_path / "inf.onnx"))
    result = tmdeploy("check", work / "good.pt", tmp_path / "inf.onnx", "--report-dir", tmp_path)
    assert result.returncode == 1 and result.stderr == "", result.stderr[-3000:]
    assert "| logits | no |" in result.stdout
    text = (tmp_path / "inf.check.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


# ---- every error is ours: one loader ---------------------------------------------------------------------


def bad_onnx_files(work: Path, d: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, distinctive message)}: files onnxruntime or onnx refuse with their own exceptions."""
    model = onnx.load(str(work / "good.onnx"))
    files = {}
    traversal = copy.deepcopy(model)
    init = max(traversal.graph.initializer, key=lambda t: len(t.raw_data))
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value="../../../../etc/hostname")
    files["traversal"] = (traversal, "outside the model's directory; refusing to read it")
    absolute = copy.deepcopy(traversal)
    next(t for t in absolute.graph.initializer if t.name == init.name).external_data[0].value = "/etc/hostname"
    files["absolute-external-path"] = (absolute, "outside the model's directory")
    custom = copy.deepcopy(model)
    custom.graph.node[2].domain = "com.example.unknown"
    custom.opset_import.add(domain="com.example.unknown", version=1)
    files["custom-domain"] = (custom, "onnxruntime cannot load")
    no_outputs = copy.deepcopy(model)
    del no_outputs.graph.output[:]
    files["no-outputs"] = (no_outputs, "its graph has no outputs")
    out = {}
    for name, (proto, message) in files.items():
        path = d / f"{name}.onnx"
        onnx.save(proto, str(path))
        out[name] = (path, message)
    return out


def test_onnx_load_failures_are_one_clean_line_everywhere(work, tmp_path):
    files = bad_onnx_files(work, tmp_path)
    results = run_all({name: (tmp_path, ["check", work / "good.pt", path]) for name, (path, _) in files.items()})
    for name, (path, message) in files.items():
        one_line_error(results[name], 1, path.name, message)
        with pytest.raises(TmdeployError, match=message):  # the runtime (and so serve) says the same
            runtime.load(path)
    with pytest.raises(TmdeployError, match="no outputs"):
        onnxfile.load(files["no-outputs"][0])  # info's loader


@pytest.mark.parametrize("name", MISMATCHED_GRAPHS)
def test_metadata_that_does_not_describe_the_graph_is_refused_by_every_reader(tmp_path, name):
    """runtime.load (so serve), Triton repositories and the parity check read metadata through metadata.read,
    which checks it against the graph: none of them fails later inside onnxruntime or polygraphy."""
    path = mismatched_graph(tmp_path / "bad.onnx", name)
    message = MISMATCHED_GRAPHS[name][1]
    for read in (runtime.load, triton.model_signature, metadata.read):
        with pytest.raises(TmdeployError, match=re.escape(message)):
            read(path)


# ---- terminal-safe text ---------------------------------------------------------------------------------


def test_clean_escapes_control_and_reordering_characters():
    assert clean("a\x1b[2Jb\x9b1m\u202ec\x07") == "a\\x1b[2Jb\\x9b1m\\u202ec\\x07"
    assert clean("one\ntwo", newlines=True) == "one\ntwo" and clean("one\ntwo") == "one\\x0atwo"
    assert clean("ümlaut 日本 [x]") == "ümlaut 日本 [x]"


def test_text_from_files_never_reaches_the_terminal_raw(work, tmp_path):
    model = onnx.load(str(work / "good.onnx"))
    model.producer_name = f"evil{ESC}]8;;http://example.com{ESC}\\link"
    for p in model.metadata_props:
        if p.key == "arch":
            p.value = f"rn26{ESC}[2J"
    onnx.save(model, str(tmp_path / "escape.onnx"))
    no_meta = copy.deepcopy(model)
    del no_meta.metadata_props[:]
    no_meta.metadata_props.add(key=f"k{ESC}[31m", value=f"v\x9b2J")
    onnx.save(no_meta, str(tmp_path / "plain.onnx"))
    bad_arch = save_with(tmp_path / "arch.pt", work, arch=f"rn{ESC}[2J99")
    results = run_all({
        "info": (tmp_path, ["info", "escape.onnx"]), "info-props": (tmp_path, ["info", "plain.onnx"]),
        "error": (tmp_path, ["export", bad_arch, "--out", "x.onnx"]),
        "report": (tmp_path, ["check", work / "good.pt", "escape.onnx", "--report-dir", tmp_path]),
    })
    for name in ("info", "info-props"):
        assert results[name].returncode == 0, results[name].stderr
        assert ESC not in results[name].stdout and "\x9b" not in results[name].stdout
    assert "evil\\x1b]8;;http" in results["info"].stdout and "rn26\\x1b[2J" in results["info"].stdout
    one_line_error(results["error"], 1, "unknown architecture 'rn\\x1b[2J99'")
    assert ESC not in results["report"].stdout
    assert ESC not in (tmp_path / "escape.check.md").read_text()


# ---- output paths ---------------------------------------------------------------------------------------


def test_out_that_is_not_a_regular_file_or_is_the_input_is_refused(work, tmp_path):
    d = tmp_path
    (d / "good.pt").write_bytes((work / "good.pt").read_bytes())
    os.mkfifo(d / "fifo.onnx")
    (d / "link.onnx").symlink_to("good.pt")
    os.link(d / "good.pt", d / "hard.onnx")
    before = snapshot_without_fifo(d)
    results = run_all({
        "dev-null": (d, ["export", "good.pt", "--out", "/dev/null"]),
        "fifo": (d, ["export", "good.pt", "--out", "fifo.onnx"]),
        "same": (d, ["export", "good.pt", "--out", "good.pt"]),
        "symlink": (d, ["export", "good.pt", "--out", "link.onnx"]),
        "hard-link": (d, ["export", "good.pt", "--out", "hard.onnx", "--format", "trt"]),
        "train-dev": (d, ["train", "--out", "/dev/null", "--epochs", "1"]),
    })
    one_line_error(results["dev-null"], 2, "--out /dev/null is not a regular file")
    one_line_error(results["fifo"], 2, "--out fifo.onnx is not a regular file")
    for name in ("same", "symlink", "hard-link"):
        one_line_error(results[name], 2, "is the input file good.pt; refusing to overwrite it")
    one_line_error(results["train-dev"], 2, "--out /dev/null is not a regular file")
    assert Path("/dev/null").is_char_device()
    assert snapshot_without_fifo(d) == before


def snapshot_without_fifo(d: Path) -> dict:
    fifo = d / "fifo.onnx"
    assert fifo.is_fifo()
    return snapshot_dir(d, skip=fifo)


def snapshot_dir(d: Path, skip: Path | None = None) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p != skip and p.is_file()}


def test_a_long_legal_file_name_works(work, tmp_path):
    name = "m" * 250 + ".onnx"  # 255 bytes: legal; a temporary name built by adding to it would not be
    result = tmdeploy("export", work / "good.pt", "--out", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    onnx.checker.check_model(str(tmp_path / name))


def test_triton_export_writes_only_into_the_repository(work, tmp_path):
    (tmp_path / "good.pt").write_bytes((work / "good.pt").read_bytes())
    (tmp_path / "good.onnx").write_bytes(b"the user's own file")
    result = tmdeploy("export", "good.pt", "--format", "triton", "--out", "repo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "good.onnx").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx", "good.pt", "repo"]
    assert (tmp_path / "repo/good/1/model.onnx").is_file()
    expected = "TensorRT engine" if triton_engine_expected() else "the ONNX file (onnxruntime)"
    assert f"serving {expected}" in result.stdout  # --triton-model auto says which it chose


def triton_engine_expected() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def test_a_failed_engine_export_changes_no_file(work, tmp_path):
    if triton_engine_expected():
        pytest.skip("TensorRT is installed here: the engine export would succeed")
    (tmp_path / "good.pt").write_bytes((work / "good.pt").read_bytes())
    (tmp_path / "good.onnx").write_bytes(b"the user's own file")
    before = snapshot(tmp_path)
    results = run_all({"trt": (tmp_path, ["export", "good.pt", "--format", "trt"]),
                       "triton-trt": (tmp_path, ["export", "good.pt", "--format", "triton", "--triton-model", "trt"])})
    for result in results.values():
        one_line_error(result, 1, "TensorRT is not installed")
    assert snapshot(tmp_path) == before


def test_a_trt_export_writes_its_onnx_file_beside_the_engine_only(work, tmp_path):
    """``--out`` names the engine; the ONNX file it is built from goes beside it, never beside the checkpoint,
    and an ``--out`` that would be that ONNX file itself is refused before anything is written."""
    (tmp_path / "good.pt").write_bytes((work / "good.pt").read_bytes())
    (tmp_path / "good.onnx").write_bytes(b"the user's own file")
    (tmp_path / "engines").mkdir()
    before = snapshot(tmp_path)
    results = run_all({"onnx-out": (tmp_path, ["export", "good.pt", "--format", "trt", "--out", "engines/m.onnx"])})
    one_line_error(results["onnx-out"], 2, "names the engine")
    refused = run_all({"cache": (tmp_path, ["export", "good.pt", "--format", "trt", "--timing-cache", "good.pt"])})
    one_line_error(refused["cache"], 2, "--timing-cache")
    assert snapshot(tmp_path) == before
    if not triton_engine_expected():  # without TensorRT nothing is written at all
        result = run_all({"plan": (tmp_path, ["export", "good.pt", "--format", "trt", "--out", "engines/m.plan"])})
        one_line_error(result["plan"], 1, "TensorRT is not installed")
        assert snapshot(tmp_path) == before


# ---- data faults ----------------------------------------------------------------------------------------


def image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_data_faults_are_named_and_nothing_hangs(tmp_path):
    corrupt = image_folder(tmp_path / "corrupt")
    (corrupt / "a" / "1.png").write_bytes((corrupt / "a" / "1.png").read_bytes()[:60])
    garbage = image_folder(tmp_path / "garbage")
    (garbage / "b" / "2.jpg").write_bytes(b"not an image at all")
    fifo = image_folder(tmp_path / "fifo")
    os.mkfifo(fifo / "b" / "x.png")
    jobs = {name: (tmp_path, ["train", "--data", f"folder:{name}", "--epochs", "1", "--out", f"{name}.pt"])
            for name in ("corrupt", "garbage", "fifo")}
    jobs["image-size"] = (tmp_path, ["train", "--image-size", "100000", "--out", "big.pt"])
    start = time.monotonic()
    results = run_all(jobs)
    assert time.monotonic() - start < 300
    one_line_error(results["corrupt"], 1, "corrupt/a/1.png is not a readable image")
    one_line_error(results["garbage"], 1, "garbage/b/2.jpg is not a readable image")
    one_line_error(results["fifo"], 1, "fifo/b/x.png is not a regular file")
    one_line_error(results["image-size"], 2, "--image-size must be in 8..4096, got 100000")
    assert not list(tmp_path.glob("*.pt"))


# ---- option values --------------------------------------------------------------------------------------


def test_free_option_values_are_usage_errors(work, tmp_path):
    ckpt, model = work / "good.pt", work / "good.onnx"
    cases = {
        "compile-backend": (["bench", ckpt, "--compile-backend", "no-such-backend"], "unknown --compile-backend"),
        "check-seed": (["check", ckpt, model, "--seed", "-1"], "--seed must be in 0.."),
        "check-min-top1": (["check", ckpt, model, "--min-top1", "2"], "--min-top1 must be in 0.0..1.0"),
        "check-atol-nan": (["check", ckpt, model, "--atol", "nan"], "--atol must be in"),
        "check-data": (["check", ckpt, model, "--data", "mnist"], "unknown data source 'mnist'"),
        "calib-data": (["export", ckpt, "--precision", "int8", "--calib-data", "nope"], "unknown data source 'nope'"),
        "train-lr": (["train", "--lr", "inf", "--out", "t.pt"], "--lr must be in"),
        "models-classes": (["models", "--num-classes", "1000000000"], "--num-classes must be in 1..1000000"),
        "export-batch": (["export", ckpt, "--format", "trt", "--batch", "1,2,100000"], "MAX is at most 4096"),
    }
    results = run_all({name: (tmp_path, argv) for name, (argv, _) in cases.items()})
    for name, (_, message) in cases.items():
        one_line_error(results[name], 2, message)


def test_bare_state_dict_sizes_are_bounded_before_anything_is_built(work, tmp_path):
    torch.save(checkpoint.load(work / "good.pt").state_dict, tmp_path / "bare.pt")
    with pytest.raises(UsageError, match="--num-classes must be in"):
        checkpoint.load(tmp_path / "bare.pt", arch="rn26", num_classes=10**12)


# ---- predict on any torch tensor ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return runtime.load(write_model(tmp_path_factory.mktemp("predict") / "tiny.onnx"))


@pytest.mark.parametrize("convert", [
    lambda x: x.to(torch.bfloat16), lambda x: x.double(), lambda x: x.half(), lambda x: x.to_sparse(),
    lambda x: x.to(torch.float8_e4m3fn), lambda x: x.clone().requires_grad_(),
], ids=["bfloat16", "float64", "float16", "sparse", "float8", "requires-grad"])
def test_predict_converts_any_float_torch_tensor(predictor, convert):
    x = torch.rand(2, 1, 8, 8)
    converted = convert(x)
    expected = predictor.predict(converted.to_dense().float() if converted.is_sparse else converted.float())
    np.testing.assert_allclose(predictor.predict(converted), expected, rtol=1e-6, atol=1e-6)


def test_predict_refuses_a_meta_tensor_clearly(predictor):
    with pytest.raises(TmdeployError, match="meta tensor: it has a shape but no values"):
        predictor.predict(torch.empty(2, 1, 8, 8, device="meta"))


# ---- info without external data ---------------------------------------------------------------------------


def test_info_does_not_load_external_data(work, tmp_path):
    model = onnx.load(str(work / "good.onnx"))
    big = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    big.ClearField("raw_data")
    big.data_location = onnx.TensorProto.EXTERNAL
    big.external_data.add(key="location", value="weights.bin")
    big.external_data.add(key="length", value=str(1 << 30))
    del big.dims[:]
    big.dims.extend([1 << 28])  # 1 GiB of float32
    onnx.save(model, str(tmp_path / "external.onnx"))
    with open(tmp_path / "weights.bin", "wb") as f:
        f.truncate(1 << 30)  # sparse: takes no disk space, but 1 GiB of memory if read
    # VmHWM is this process image's own peak: ru_maxrss would also count the forked copy of the (large)
    # pytest process from before exec, so it depends on what ran earlier in the session.
    code = ("import re, sys; from tmdeploy.cli import main; status = main(['info', sys.argv[1]]); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print('maxrss_kib', hwm); sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "external.onnx")], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    maxrss_mib = int(result.stdout.split("maxrss_kib")[-1]) / 1024
    assert maxrss_mib < 700, f"info used {maxrss_mib:.0f} MiB for a model pointing at 1 GiB of external data"


# ---- serve on a busy port ---------------------------------------------------------------------------------


def test_serve_on_a_busy_port_fails_fast_with_one_line(tmp_path):
    model = write_model(tmp_path / "tiny.onnx")
    with socket.socket() as listener:  # a silent TCP listener: accepts nothing, answers nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        start = time.monotonic()
        result = tmdeploy("serve", model, "--port", port)
        elapsed = time.monotonic() - start
    one_line_error(result, 1, f"port {port} on 127.0.0.1 is already in use")
    assert elapsed < 60


# ---- SIGINT and SIGTERM ---------------------------------------------------------------------------------


def interrupt_when(argv: list, ready, signum: int) -> tuple[bool, int, str]:
    """``tmdeploy ARGV`` in a fresh process, sent ``signum`` as soon as ``ready()`` holds: (sent, exit status,
    stderr); sent is False when the command finished first."""
    proc = subprocess.Popen([sys.executable, "-m", "tmdeploy", *map(str, argv)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sent = False
    try:
        while proc.poll() is None:
            if ready():
                proc.send_signal(signum)
                sent = True
                break
            time.sleep(0.002)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return sent, proc.returncode, stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_write_removes_the_temp_file_and_keeps_the_target(tmp_path, big_checkpoint, signum, status):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous artifact")
    sent, returncode, stderr = interrupt_when(["export", big_checkpoint, "--out", target],
                                              lambda: partly_written(tmp_path, target.name) is not None, signum)
    assert sent, "the export finished before it could be interrupted"
    assert returncode == status, stderr
    assert stderr.splitlines() == [f"tmdeploy: error: interrupted by {signal.Signals(signum).name}"], stderr
    assert target.read_bytes() == b"previous artifact"
    assert not temp_files(tmp_path, target.name) and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_an_interrupt_just_after_start_is_one_line(work, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tmdeploy", "export", str(work / "good.pt"), "--out", "x.onnx"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # inside the imports
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.splitlines() == ["tmdeploy: error: interrupted by SIGINT"], stderr
    assert not list(tmp_path.iterdir())


# ---- strict JSON, calibration data, engine suffixes, dependency floors ------------------------------------


def test_int8_and_nan_reports_are_strict_json():
    tolerance = DEFAULT_TOLERANCES["int8"]
    assert math.isinf(tolerance.atol)
    report = CheckReport(onnx="m.onnx", checkpoint="c.pt", precision="int8", tolerance=asdict(tolerance),
                         passed=False, outputs={"logits": {"max_abs_error": float("nan")}}, inputs="x", batches=[1])

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    parsed = json.loads(report.to_json(), parse_constant=refuse)
    assert parsed["tolerance"]["atol"] is None and parsed["outputs"]["logits"]["max_abs_error"] is None


def test_calibration_defaults_to_the_cards_data_and_must_fit(work):
    ckpt = checkpoint.load(work / "good.pt")
    assert calibration_data(ckpt, None) == "digits"  # what the card records, not a fixed default
    ckpt.card.extra = {}
    with pytest.raises(UsageError, match="does not record its training data: name calibration data with --calib-data"):
        calibration_data(ckpt, None)
    with pytest.raises(UsageError, match="'cifar10:/x' has 3-channel images, the model takes 1"):
        calibration_data(ckpt, "cifar10:/x")
    with pytest.raises(UsageError, match="holds 8x8 images, the model takes 32x32"):
        data.check_calibration_fit("digits", 1, 32, trained_on="folder:/x")
    data.check_calibration_fit("digits", 1, 32, trained_on="digits")  # its own training data always fits


def test_serve_and_triton_take_every_engine_suffix_runtime_load_takes(tmp_path):
    for suffix in (".plan", ".engine"):
        with pytest.raises(TmdeployError, match="engine file not found"):
            triton.model_signature(tmp_path / f"missing{suffix}")
    with pytest.raises(UsageError, match=r"expected an \.onnx file or a TensorRT engine \(\.plan, \.engine\)"):
        triton.model_signature(tmp_path / "model.trt")


def test_dependency_floors_are_the_tested_versions():
    """pyproject's floors for the packages whose APIs moved are the releases CI tests (constraints.txt):
    polygraphy's SimpleCompareFunc and onnxscript's rules.common fusions are missing from older ones."""
    root = Path(__file__).parents[1]
    floors = {}
    for requirement in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, _, version = requirement.partition(">=")
        floors[name.strip().lower().replace("_", "-")] = tuple(int(v) for v in version.split(".")[:2])
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower().replace("_", "-")] = tuple(int(v) for v in version.split(".")[:2])
    for package in ("polygraphy", "onnxscript", "onnx-ir"):  # onnx-ir: imported by tmdeploy.export, so declared
        assert floors[package] == pins[package], (package, floors.get(package), pins[package])
    from onnxscript.rewriter.rules.common import fuse_batchnorm_into_conv_rule  # noqa: F401
    from polygraphy.comparator.compare import SimpleCompareFunc  # noqa: F401


# ---- round three: a Triton repository's other versions and files --------------------------------------------


def user_repository(root: Path) -> Path:
    """A repository whose model ``m`` holds the user's version 2, a notes file and an old version 1."""
    model_dir = root / "repo" / "m"
    (model_dir / "2").mkdir(parents=True)
    (model_dir / "2" / "model.onnx").write_bytes(b"the user's version 2")
    (model_dir / "notes.md").write_text("the user's notes")
    (model_dir / "1").mkdir()
    (model_dir / "1" / "model.onnx").write_bytes(b"an old version 1")
    (model_dir / "1" / "README").write_text("beside version 1")
    return model_dir


def test_writing_version_1_keeps_the_other_versions_and_files(tmp_path):
    model_dir = user_repository(tmp_path)
    onnx_file = write_model(tmp_path / "m.onnx")
    assert triton.write_model_repository(onnx_file, tmp_path / "repo", name="m") == model_dir
    assert (model_dir / "2" / "model.onnx").read_bytes() == b"the user's version 2"
    assert (model_dir / "notes.md").read_text() == "the user's notes"
    assert (model_dir / "1" / "README").read_text() == "beside version 1"
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert (model_dir / "labels.txt").read_text().splitlines() == CLASSES
    assert 'name: "m"' in (model_dir / "config.pbtxt").read_text()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]  # no staged or old directory left


@pytest.mark.parametrize("blocker", ["config.pbtxt", "labels.txt", "1/model.onnx", "1", "m"])
def test_something_in_the_way_of_a_repository_file_is_refused_before_anything_is_written(tmp_path, blocker):
    model_dir = user_repository(tmp_path)
    if blocker == "m":  # the model's directory itself is a link to another one
        (tmp_path / "elsewhere").mkdir()
        os.rename(model_dir, tmp_path / "elsewhere" / "m")
        model_dir.symlink_to(tmp_path / "elsewhere" / "m")
    elif blocker == "1":
        for p in (model_dir / "1").iterdir():
            p.unlink()
        (model_dir / "1").rmdir()
        (model_dir / "1").write_text("a file where version 1's folder goes")
    else:
        (model_dir / blocker).unlink(missing_ok=True)
        (model_dir / blocker).mkdir()
        (model_dir / blocker / "inside").write_text("kept")
    onnx_file = write_model(tmp_path / "m.onnx")
    real = model_dir.resolve()  # snapshot() does not follow the link itself
    before = snapshot(real), sorted(os.listdir(tmp_path / "repo"))
    with pytest.raises(UsageError, match="is in the way"):
        triton.write_model_repository(onnx_file, tmp_path / "repo", name="m")
    assert (snapshot(real), sorted(os.listdir(tmp_path / "repo"))) == before


def test_triton_export_refuses_a_blocked_repository_in_one_line_and_keeps_it(work, tmp_path):
    model_dir = user_repository(tmp_path)
    (tmp_path / "repo" / "good").mkdir()
    (tmp_path / "repo" / "good" / "config.pbtxt").mkdir()
    (tmp_path / "good.pt").write_bytes((work / "good.pt").read_bytes())
    before = snapshot(tmp_path)
    result = tmdeploy("export", "good.pt", "--format", "triton", "--triton-model", "onnx", "--out", "repo",
                      cwd=tmp_path)
    one_line_error(result, 2, "repo/good/config.pbtxt is in the way")
    assert snapshot(tmp_path) == before and model_dir.is_dir()


@pytest.mark.slow
def test_an_interrupted_triton_export_leaves_the_old_repository_or_the_new_one(tmp_path, big_checkpoint):
    model_dir = user_repository(tmp_path)
    big = model_dir.with_name("big")
    os.rename(model_dir, big)
    before = snapshot(tmp_path / "repo")
    sent, returncode, stderr = interrupt_when(
        ["export", big_checkpoint, "--format", "triton", "--triton-model", "onnx", "--out", tmp_path / "repo"],
        lambda: temp_files(tmp_path / "repo", "big"), signal.SIGINT)  # the staged directory
    assert sent, "the export finished before it could be interrupted"
    after = snapshot(tmp_path / "repo")
    assert returncode in (0, 130), stderr
    if returncode == 130:
        assert stderr.splitlines() == ["tmdeploy: error: interrupted by SIGINT"], stderr
    if after != before:  # the signal came after the swap: the whole new state
        new_files = {"big/config.pbtxt", "big/labels.txt"}
        assert {k: v for k, v in after.items() if k not in new_files and k != "big/1/model.onnx"} == {
            k: v for k, v in before.items() if k != "big/1/model.onnx"}
        assert new_files <= set(after) and after["big/1/model.onnx"] != before["big/1/model.onnx"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["big"]  # no staged or old directory


# ---- round three: signals in every long step, and in the tear-down -------------------------------------------

# Runs the real command line, printing a marker when --tm-form auto starts timing (the real measure runs on).
TIMING_MARKER = ("import sys\nfrom tmdeploy.optimize import auto_form as forms\nmeasure = forms.measure\n"
                 "def marked(*args, **kwargs):\n    print('TIMING', flush=True)\n    return measure(*args, **kwargs)\n"
                 "forms.measure = marked\nfrom tmdeploy.cli import main\nsys.exit(main())\n")


@pytest.mark.slow
def test_sigint_while_tm_form_auto_times_the_forms_is_one_line_and_keeps_out(work, tmp_path):
    (tmp_path / "out.onnx").write_bytes(b"previous artifact")
    proc = subprocess.Popen([sys.executable, "-c", TIMING_MARKER, "export", str(work / "good.pt"), "--tm-form", "auto",
                             "--out", "out.onnx"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "TIMING"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and stderr.splitlines() == ["tmdeploy: error: interrupted by SIGINT"], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert (tmp_path / "out.onnx").read_bytes() == b"previous artifact"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_the_work_is_done_does_not_kill_the_tear_down(work, tmp_path, signum):
    """Torch's finalizers run at exit: a signal then used to end the process by the signal, or print a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "tmdeploy", "export", str(work / "good.pt"), "--out", "x.onnx"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("wrote")
        time.sleep(0.3)  # past the command's return, inside the tear-down (about a second here)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and stderr == "", stderr
    onnx.checker.check_model(str(tmp_path / "x.onnx"))


# ---- round three: hangs on data, and sidecars ---------------------------------------------------------------


def within(seconds: float, fn, *args):
    """``fn(*args)`` in a daemon thread: its result or exception, or a failure if it blocks (a hang)."""
    import threading

    out = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} still running after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.parametrize("link", ["loop-to-itself", "loop-to-the-root", "second-link-to-a-class", "test-links-to-train"])
def test_folder_data_reads_each_real_folder_once_and_refuses_loops(tmp_path, link):
    root = image_folder(tmp_path / "imgs")
    if link == "loop-to-itself":
        (root / "a" / "loop").symlink_to(".")
    elif link == "loop-to-the-root":
        (root / "b" / "up").symlink_to("..")
    elif link == "second-link-to-a-class":
        (root / "b" / "more").symlink_to(root / "a")
    else:
        image_folder(tmp_path / "split" / "train")
        (tmp_path / "split" / "test").mkdir()
        (tmp_path / "split" / "test" / "a").symlink_to(tmp_path / "split" / "train" / "a")
        image_folder(tmp_path / "other")
        (tmp_path / "split" / "test" / "b").symlink_to(tmp_path / "other" / "b")
        root = tmp_path / "split"
    with pytest.raises(TmdeployError, match="again .a link loop, or a second link to it."):
        within(60, data.load, f"folder:{root}", 12)


def test_folder_data_follows_a_link_to_another_folder_once(tmp_path):
    root = image_folder(tmp_path / "imgs")
    image_folder(tmp_path / "more")
    (root / "a" / "extra").symlink_to(tmp_path / "more" / "a")  # four more images, read once
    split = within(60, data.load, f"folder:{root}", 12)
    assert len(split.train) + len(split.test) == 12


def test_train_on_a_folder_with_a_link_loop_is_one_line(tmp_path):
    root = image_folder(tmp_path / "imgs")
    (root / "a" / "loop").symlink_to(".")
    result = tmdeploy("train", "--data", "folder:imgs", "--epochs", "1", "--out", "t.pt", cwd=tmp_path)
    one_line_error(result, 1, "imgs/a/loop is the folder imgs/a again")
    assert not (tmp_path / "t.pt").exists()


def test_a_16_bit_png_is_scaled_by_its_depth(tmp_path):
    from PIL import Image

    ramp = (np.arange(8, dtype=np.uint32) * 65535 // 7).astype(np.uint16)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.tile(ramp, (8, 1))).save(tmp_path / "imgs" / cls / f"{i}.png")
    assert Image.open(tmp_path / "imgs" / "a" / "0.png").mode == "I;16"
    split = data.load(f"folder:{tmp_path / 'imgs'}", image_size=8)
    image = split.train[0][0]
    assert image.shape == (3, 8, 8)
    np.testing.assert_allclose(image[0, 0].numpy(), np.arange(8) / 7, atol=1 / 255)  # not [0, 1, 1, 1, ...]


def test_a_32_bit_image_in_folder_data_is_refused(tmp_path):
    from PIL import Image

    root = image_folder(tmp_path / "imgs")
    Image.fromarray(np.full((8, 8), 1 << 20, dtype=np.int32), "I").save(root / "a" / "deep.tif")
    with pytest.raises(TmdeployError, match="deep.tif has 32-bit integer pixels"):
        data.load(f"folder:{root}", 8)


@pytest.mark.parametrize("fault", ["sparse-1-TiB", "fifo"])
def test_a_cifar_batch_file_is_bounded_before_it_is_read(tmp_path, fault):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    target = batches / "data_batch_1"
    if fault == "fifo":
        os.mkfifo(target)
    else:
        try:
            with open(target, "wb") as f:
                f.truncate(1 << 40)
        except OSError:
            pytest.skip("this file system holds no 1 TiB sparse file")
    expected = "more than any CIFAR10 batch file" if fault != "fifo" else "is not a regular file"
    with pytest.raises(TmdeployError, match=expected):
        within(30, data.load, f"cifar10:{tmp_path}")


@pytest.fixture
def plan(tmp_path):
    from test_engines import fake_engine

    engine, _ = fake_engine(tmp_path, write_model(tmp_path / "tiny.onnx"))
    return engine


def test_a_sidecar_that_is_a_fifo_is_refused_without_waiting(plan, tmp_path):
    sidecar = plan.with_name(plan.name + ".json")
    sidecar.unlink()
    os.mkfifo(sidecar)
    with pytest.raises(TmdeployError, match="tiny.plan.json is not a regular file"):
        within(30, triton.model_signature, plan)


@pytest.mark.parametrize("key, value, expected", [
    ("batch", "1,32,256", "'batch' is '1,32,256', expected"),
    ("batch", {"min": 1, "opt": 64, "max": 8}, "positive integers in order"),
    ("batch", {"min": True, "opt": 1, "max": 8}, "'batch' is"),
    ("profile", {"input": "images", "min": [1, "3"], "opt": [1], "max": [1]}, "'profile' is"),
    ("metadata", ["class_names"], "'metadata' is"),
    ("onnx_path", 7, "'onnx_path' is 7, expected a string"),
])
def test_malformed_sidecar_values_are_one_error(plan, tmp_path, key, value, expected):
    sidecar = plan.with_name(plan.name + ".json")
    content = json.loads(sidecar.read_text())
    content[key] = value
    sidecar.write_text(json.dumps(content))
    with pytest.raises(TmdeployError, match=re.escape(expected)):
        triton.write_model_repository(plan, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


# ---- round three: duplicate metadata keys, exact parameter counts ------------------------------------------


def test_a_metadata_key_given_twice_is_refused_by_every_reader(work, tmp_path):
    model = onnx.load(str(work / "good.onnx"))
    model.metadata_props.add(key="class_names", value=json.dumps(["x", "y", "z"]))
    path = tmp_path / "twice.onnx"
    onnx.save(model, str(path))
    message = "metadata key 'class_names' appears more than once"
    for read in (onnxfile.load, runtime.load, triton.model_signature, metadata.read):  # serve reads through these
        with pytest.raises(TmdeployError, match=message):
            read(path)
    results = run_all({"info": (tmp_path, ["info", path]), "check": (tmp_path, ["check", work / "good.pt", path])})
    for result in results.values():
        one_line_error(result, 1, "twice.onnx", message)


def test_info_counts_parameters_exactly(tmp_path):
    """An initializer may declare any dims without holding data (external data, never read by info)."""
    model = onnx.load(str(write_model(tmp_path / "m.onnx")))
    huge = model.graph.initializer.add(name="huge", data_type=onnx.TensorProto.FLOAT, dims=[1 << 40, 1 << 40])
    huge.data_location = onnx.TensorProto.EXTERNAL
    huge.external_data.add(key="location", value="huge.bin")
    (tmp_path / "huge.bin").write_bytes(b"")
    onnx.save(model, str(tmp_path / "huge.onnx"))
    expected = (1 << 80) + graph.parameter_count(onnx.load(str(tmp_path / "m.onnx")))
    assert graph.parameter_count(onnxfile.load(tmp_path / "huge.onnx")) == expected
    result = tmdeploy("info", "huge.onnx", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parameters"] == expected
    del huge.dims[:]
    huge.dims.extend([4, -2])
    with pytest.raises(TmdeployError, match="declares a negative dimension"):
        graph.parameter_count(model)


# ---- round three: list options, memory bounds, empty splits, the exporter's opsets ---------------------------


def test_list_options_refuse_a_value_given_twice():
    from tmdeploy.bench import BenchOptions
    from tmdeploy.export.options import ExportOptions
    from tmdeploy.optimize import OptimizeOptions
    from tmdeploy.verify import CheckOptions

    for options, message in ((BenchOptions(backends=("ort-fp32", "pytorch", "ort-fp32")), "--backends names 'ort-fp32'"),
                             (BenchOptions(batches=(1, 32, 1)), "--batch names 1 more than once"),
                             (CheckOptions(batches=(7, 7)), "--batch names 7"),
                             (OptimizeOptions(precisions=("fp32", "fp32")), "--precisions names 'fp32'"),
                             (OptimizeOptions(forms=("folded", "folded")), "--forms names 'folded'"),
                             (ExportOptions(precision="fp16", keep_fp32=("Conv", "Conv")), "--keep-fp32 names 'Conv'")):
        with pytest.raises(UsageError, match=re.escape(message)):
            options.validate()


def one_image_folder(root: Path) -> Path:
    from PIL import Image

    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "a" / "only.png")
    return root


def test_bad_values_and_sizes_are_one_line_at_the_command_line(work, tmp_path):
    one_image_folder(tmp_path / "one")
    good, good_onnx = work / "good.pt", work / "good.onnx"
    torch.manual_seed(0)
    rgb_model = models.create("rn26", num_classes=3, in_chans=3).eval()  # folder images are RGB
    rgb = checkpoint.save(tmp_path.parent / f"{tmp_path.name}-rgb.pt", rgb_model,
                          checkpoint.card_for(rgb_model, CLASSES, [0.5] * 3, [0.25] * 3, input_size=(3, 16, 16)))
    jobs = {
        "bench-backends-twice": ["bench", good, "--backends", "ort-fp32,ort-fp32"],
        "check-batch-times-iterations": ["check", good, good_onnx, "--batch", "4096", "--iterations", "100000"],
        "train-digits-at-4096": ["train", "--image-size", "4096", "--epochs", "1", "--out", "t.pt"],
        "check-one-image": ["check", good, good_onnx, "--data", "folder:one"],
        "bench-one-image": ["bench", rgb, "--data", "folder:one", "--backends", "pytorch", "--batch", "1"],
        "opset-24": ["export", good, "--opset", "24", "--out", "o.onnx"],
    }
    results = run_all({name: (tmp_path, argv) for name, argv in jobs.items()})
    one_line_error(results["bench-backends-twice"], 2, "--backends names 'ort-fp32' more than once")
    one_line_error(results["check-batch-times-iterations"], 2, "409,600,000 random images, more than 1,000,000")
    one_line_error(results["train-digits-at-4096"], 2, "digits at 4096x4096: 1,797 images of 1x4096x4096 take 112.3 GiB")
    for name in ("check-one-image", "bench-one-image"):
        one_line_error(results[name], 1, "data 'folder:one' gives an empty test split (1 images in all)")
    one_line_error(results["opset-24"], 2, "--opset 24: the torchscript exporter writes opsets up to 20")
    assert results["opset-24"].stdout == ""  # no Torch IR graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]


def test_random_check_inputs_are_bounded_in_bytes_before_they_are_made(tmp_path):
    from tmdeploy.verify import CheckOptions
    from tmdeploy.verify.parity import make_feeds

    big = replace(metadata.read(write_model(tmp_path / "m.onnx")), input_size=(3, 1024, 1024))
    with pytest.raises(UsageError, match="--batch x --iterations: 1,100 images of 3x1024x1024 take 12.9 GiB"):
        make_feeds(big, CheckOptions(batches=(100, 10), iterations=10))


@pytest.mark.slow
def test_tm_form_auto_out_of_memory_is_one_line_without_escapes(tmp_path):
    """The batch-32 timing runs with 100 MB more address space than the process holds: onnxruntime's allocation
    fails for real. It was an IndexError, after onnxruntime's own log in terminal colours."""
    torch.manual_seed(0)
    model = models.create("rn26", num_classes=3, in_chans=1).eval()
    card = checkpoint.card_for(model, CLASSES, [0.5], [0.25], input_size=(1, 256, 256))
    checkpoint.save(tmp_path / "big.pt", model, card)
    code = ("import re, resource, sys\nfrom tmdeploy.optimize import auto_form as forms\nmeasure, calls = forms.measure, []\n"
            "def limited(*args, **kwargs):\n    calls.append(1)\n    if len(calls) == 2:\n"
            "        size = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
            "        resource.setrlimit(resource.RLIMIT_AS, (size + (100 << 20), resource.RLIM_INFINITY))\n"
            "    return measure(*args, **kwargs)\nforms.measure = limited\nfrom tmdeploy.cli import main\n"
            "sys.exit(main())\n")
    result = subprocess.run([sys.executable, "-c", code, "export", "big.pt", "--tm-form", "auto", "--out", "b.onnx"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    one_line_error(result, 1, "--tm-form auto: the", "form's graph failed on onnxruntime at batch 32")
    assert not (tmp_path / "b.onnx").exists()
