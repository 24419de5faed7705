"""optimize: real exports, onnxruntime sessions and polygraphy checks on a tiny model; never timings' values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tmdeploy.cli import main
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.optimize import OptimizeOptions, optimize
from tmdeploy.optimize.candidates import Candidate
from tmdeploy.optimize.decide import decide as _decide
from tmdeploy.optimize.stage import CHOICE_KEY

# one thread, short windows, few held-out images: seconds on a shared 2-core machine
FAST = ["--quick", "--threads", "1", "--batch", "1,4", "--window-s", "0.05", "--profile-s", "2",
        "--accuracy-limit", "64", "--quiet"]


@pytest.fixture(scope="module")
def tiny_tm(tiny):
    """Untrained rn26-tm on 1×8×8 inputs: TM blocks, so the forms differ, and cheap."""
    return tiny("rn26-tm")


def _strict(text: str) -> dict:
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def run_dir(tiny_tm, tmp_path_factory):
    out = tmp_path_factory.mktemp("optimized") / "out"
    assert main(["optimize", str(tiny_tm.path), *FAST, "--out", str(out)]) == 0
    return out


def test_writes_strict_status_with_a_record_per_candidate_and_step(run_dir):
    status = _strict((run_dir / "status.json").read_text())
    names = [c["name"] for c in status["candidates"]]
    assert names[0] == "normalized-fp32" and status["candidates"][0]["default_export"]
    assert {"normalized-fp16", "normalized-int8-tensorrt"} <= set(names)  # --quick: the default form only
    for c in status["candidates"]:
        assert [s["step"] for s in c["steps"]] == ["build", "parity", "accuracy", "profile"]
        assert {s["status"] for s in c["steps"]} <= {"ok", "failed", "skipped"}
        assert c["size_mb"] > 0 and c["build_s"] > 0 and c["tolerance"] and c["errors"]["max_abs_error"] >= 0
        assert 0 <= c["accuracy"]["agreement"] <= 1
        assert c["reproduce"]["command"].startswith("polygraphy run " if c["runtime"] == "onnxruntime"
                                                    else "tmdeploy check ")
        assert c["onnxruntime_providers"] == ([["CPUExecutionProvider", {}]] if c["runtime"] == "onnxruntime"
                                              else None)
        if c["status"] == "ok":
            assert [s["batch"] for s in c["latency"]] == [1, 4]
            assert all(s["p50_ms"] <= s["p99_ms"] and s["throughput"] > 0 for s in c["latency"])
    env = status["environment"]
    assert env["cpu"] and env["cores"] >= 1 and env["onnxruntime"] and env["polygraphy"]
    assert set(env["int8_recipes_for_this_cpu"]["recipes"]) < set(status["options"]["int8_recipes"])
    assert all(p["ended_by"] in ("two windows agreed", "time budget") for p in status["profile"])


def test_the_choice_is_the_fastest_passing_candidate_in_its_own_table(run_dir):
    status = _strict((run_dir / "status.json").read_text())
    passing = {c["name"]: c["latency"][0]["speedup_vs_default"] for c in status["candidates"] if c["status"] == "ok"}
    decision = status["decision"]
    assert decision["strategy"] == "min-latency" and decision["batch"] == 1
    assert decision["chosen"] == max(passing, key=passing.get)  # the speed-up beside the default export ranks
    assert decision["metric"] == "speedup_vs_default"
    model = onnx.load(str(run_dir / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[CHOICE_KEY])["chosen"] == decision["chosen"]
    assert meta["precision"] == decision["precision"]


def test_report_and_plot(run_dir):
    md = (run_dir / "report.md").read_text()
    assert "**Choice: `" in md and "## Candidates" in md and "polygraphy run candidates/" in md
    assert (run_dir / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_the_report_names_every_provider_setting_a_deployment_needs():
    """With onnxruntime's TensorRT provider, CUDA runs the nodes TensorRT does not take: its settings count too."""
    from tmdeploy.optimize.candidates import RUNTIMES, _candidate
    from tmdeploy.report.optimize import _runs_on

    trt = _candidate("normalized", "torchscript", "fp16", None, RUNTIMES["cuda"]["onnxruntime-tensorrt"], None)
    decision = {"runtime": trt.runtime, "provider": trt.provider, "provider_options": trt.provider_options,
                "onnxruntime_providers": trt.onnxruntime_providers(), "engine": None}
    assert _runs_on(decision) == (", to be run by onnxruntime with TensorrtExecutionProvider then "
                                  "CUDAExecutionProvider (use_tf32=0).")
    graph = _candidate("normalized", "torchscript", "fp32", None, RUNTIMES["cuda"]["onnxruntime-cuda-graph"], None)
    assert _runs_on({"runtime": graph.runtime, "provider": graph.provider, "provider_options": graph.provider_options,
                     "engine": None}) == (  # an older status file: no providers list
        ", to be run by onnxruntime with CUDAExecutionProvider (use_tf32=0, enable_cuda_graph=1).")


def test_reproduction_command_rechecks_parity_without_tmdeploy(run_dir):
    status = _strict((run_dir / "status.json").read_text())
    chosen = min((c for c in status["candidates"] if c["status"] == "ok" and c["runtime"] == "onnxruntime"),
                 key=lambda c: c["latency"][0]["p50_ms"])  # OpenVINO's is tmdeploy's: tests/test_openvino.py
    polygraphy = str(Path(sys.executable).with_name("polygraphy"))
    argv = chosen["reproduce"]["command"].split()
    done = subprocess.run([polygraphy, *argv[1:]], cwd=run_dir, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASSED" in done.stdout + done.stderr


def test_an_impossible_tolerance_fails_every_candidate_with_its_numbers(tiny_tm, tmp_path):
    out = tmp_path / "out"
    result = optimize(tiny_tm, OptimizeOptions(quick=True, precisions=("fp32",), forms=("normalized", "deferred"),
                                               atol=0.0, rtol=0.0, threads=1, batches=(1,), accuracy_limit=32,
                                               profile_s=0.0, window_s=0.0, out=out, show_progress=False))
    assert not result.passed and result.choice is None
    status = _strict((out / "status.json").read_text())
    for c in status["candidates"]:
        parity = c["steps"][1]
        assert c["status"] == "failed" and parity["status"] == "failed"
        assert c["errors"]["max_abs_error"] > 0 and c["tolerance"]["atol"] == 0
        assert f"max abs error {c['errors']['max_abs_error']:.3g} beyond atol 0" in parity["reason"]
        assert c["steps"][3]["status"] == "skipped" and not c["latency"]
    assert not (out / "model.onnx").exists()


def test_an_accuracy_floor_nothing_meets_exits_1_and_keeps_the_old_model(tiny_tm, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"the model shipped last week")
    code = main(["optimize", str(tiny_tm.path), *FAST, "--precisions", "fp32", "--min-top1", "1.0",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("tmdeploy: error: no candidate passed") and len(err.splitlines()) == 1
    assert (out / "model.onnx").read_bytes() == b"the model shipped last week"
    status = _strict((out / "status.json").read_text())
    assert status["passed"] is False and status["decision"] is None
    accuracy = status["candidates"][0]["steps"][2]
    assert accuracy["status"] == "failed" and "top-1" in accuracy["reason"] and "(by " in accuracy["reason"]
    assert "**No candidate passed**" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, match", [
    (["--strategy", "fastest"], "unknown --strategy 'fastest'"),
    (["--strategy", "max-throughput-under-latency"], "a latency bound (MS)"),
    (["--strategy", "max-throughput-under-latency", "soon"], "MS is milliseconds"),
    (["--strategy", "min-latency", "5"], "a latency bound (MS)"),
    (["--forms", "twisted"], "unknown --forms 'twisted'"),
    (["--int8-recipes", "magic"], "unknown --int8-recipes 'magic'"),
    (["--min-agreement", "2"], "--min-agreement must be in"),
    (["--target", "tpu"], "unknown --target 'tpu'"),
    (["--target", "cuda", "--runtimes", "openvino"], "OpenVINO is a CPU runtime"),
    (["--runtimes", "tensorrt"], "unknown --runtimes 'tensorrt'"),
])
def test_bad_options_are_one_line_and_exit_2_before_anything_runs(tiny_tm, tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    assert main(["optimize", str(tiny_tm.path), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err
    assert not out.exists()


def test_bad_inputs_are_one_line_errors_that_change_nothing(tiny_tm, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    assert main(["optimize", str(tiny_tm.path), "--out", str(blocker)]) == 2
    assert "is not a directory" in capsys.readouterr().err and blocker.read_text() == "a file, not a folder"
    assert main(["optimize", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tmdeploy: error:") and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def _cuda_usable() -> bool:
    import onnxruntime as ort
    import torch

    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


@pytest.mark.skipif(_cuda_usable(), reason="CUDA candidates can run here (tests/test_cuda.py runs them)")
def test_target_cuda_without_a_usable_cuda_provider_is_one_line_and_exit_1(tiny_tm, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["optimize", str(tiny_tm.path), "--target", "cuda", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert ("CUDAExecutionProvider" in err and "onnxruntime-gpu" in err) or "no CUDA device" in err, err
    assert not out.exists()
    with pytest.raises(TmdeployError):
        OptimizeOptions(target="cuda").validate()


def test_cuda_candidates_default_first_int8_only_where_tensorrt_runs_it():
    from tmdeploy.optimize.candidates import RUNTIMES, candidates
    from tmdeploy.runtimes.onnxruntime import CUDA_INT8

    options = OptimizeOptions(target="cuda", forms=("normalized", "folded-padded"))
    todo = candidates(options, ("tensorrt",), tuple(RUNTIMES["cuda"]))
    by_name = {c.name: c for c in todo}
    assert len(by_name) == len(todo)
    default = todo[0]
    assert default.name == "normalized-fp32" and default.is_default and sum(c.is_default for c in todo) == 1
    assert (default.provider, default.provider_options) == ("CUDAExecutionProvider", {"use_tf32": "0"})
    for form in options.forms:
        for precision in ("fp32", "fp16"):
            for suffix in ("", "-cuda-graph", "-cuda-graph-nhwc", "-ort-trt", "-trt"):
                assert not by_name[f"{form}-{precision}{suffix}"].skipped
    assert by_name["folded-padded-fp16-cuda-graph-nhwc"].provider_options == {
        "use_tf32": "0", "enable_cuda_graph": "1", "prefer_nhwc": "1"}
    assert by_name["normalized-fp32-ort-trt"].provider == "TensorrtExecutionProvider"
    # what a deployment passes to onnxruntime to run it as timed: CUDA, which runs the rest, without TF32 too
    assert by_name["normalized-fp32-ort-trt"].onnxruntime_providers() == [
        ["TensorrtExecutionProvider", {}], ["CUDAExecutionProvider", {"use_tf32": "0"}], ["CPUExecutionProvider", {}]]
    assert default.onnxruntime_providers() == [["CUDAExecutionProvider", {"use_tf32": "0"}], ["CPUExecutionProvider", {}]]
    assert by_name["normalized-fp32-trt"].provider is None
    int8 = [c for c in todo if c.precision == "int8"]
    on_cuda_provider = [c for c in int8 if c.provider == "CUDAExecutionProvider"]
    assert [c.name for c in on_cuda_provider] == ["normalized-int8-tensorrt", "folded-padded-int8-tensorrt"]
    assert all(c.skipped == CUDA_INT8 for c in on_cuda_provider)  # listed with the reason, never built
    assert {c.runtime for c in int8 if not c.skipped} == {"onnxruntime-tensorrt", "tensorrt"}
    # without TensorRT: onnxruntime's provider is not offered, tmdeploy's engine is listed SKIPPED with why
    without = tuple(n for n in RUNTIMES["cuda"] if n != "onnxruntime-tensorrt")
    todo = candidates(options, ("tensorrt",), without, {"tensorrt": "TensorRT is not installed"})
    assert not [c for c in todo if c.runtime == "onnxruntime-tensorrt"]
    engines = [c for c in todo if c.runtime == "tensorrt"]
    assert len(engines) == 6 and all(c.skipped == "TensorRT is not installed" for c in engines)


def test_the_cuda_runtimes_offered_are_the_ones_present():
    import importlib.util

    import onnxruntime as ort

    from tmdeploy.optimize.search import _runtimes

    names, missing = _runtimes("cuda")
    has_trt_provider = "TensorrtExecutionProvider" in ort.get_available_providers()
    assert ("onnxruntime-tensorrt" in names) == has_trt_provider
    assert names[:3] == ("onnxruntime", "onnxruntime-cuda-graph", "onnxruntime-cuda-graph-nhwc")
    assert "tensorrt" in names and ("tensorrt" in missing) == (importlib.util.find_spec("tensorrt") is None)
    assert "openvino" not in names


def _timed(name: str, *stats) -> Candidate:
    cand = Candidate(name, "normalized", "torchscript", "fp32")
    for step in cand.steps:
        step.status = "ok"
    cand.latency = [{"batch": b, "p50_ms": p50, "p99_ms": p99, "throughput": thr} for b, p50, p99, thr in stats]
    return cand


def test_strategies_choose_by_their_own_measure():
    a = _timed("a", (1, 1.0, 1.2, 1000), (32, 10.0, 12.0, 3200))
    b = _timed("b", (1, 0.8, 3.0, 1250), (32, 14.0, 20.0, 2300))
    c = _timed("c", (1, 0.5, 0.6, 2000), (32, 6.0, 7.0, 5300))
    c.steps[1].status = "failed"  # the fastest, but wrong: never chosen
    todo = [a, b, c]
    assert _decide(todo, OptimizeOptions())["chosen"] == "b"
    assert _decide(todo, OptimizeOptions(strategy="max-throughput"))["chosen"] == "a"
    under = _decide(todo, OptimizeOptions(strategy="max-throughput-under-latency", latency_ms=2.0))
    assert (under["chosen"], under["batch"]) == ("a", 1)
    assert _decide(todo, OptimizeOptions(strategy="max-throughput-under-latency", latency_ms=0.1)) is None
    # timed beside the default export, the paired speed-ups rank: a p50 moves with the minute it was timed in
    for cand, speedups in ((a, (1.0, 1.0)), (b, (1.3, 0.7)), (c, (2.0, 1.6))):
        for stats, speedup in zip(cand.latency, speedups):
            stats["speedup_vs_default"] = speedup
    a.latency[0]["speedup_vs_default"] = 1.4  # its batch-1 p50 above b's came from a slow minute
    chosen = _decide(todo, OptimizeOptions())
    assert (chosen["chosen"], chosen["metric"], chosen["value"]) == ("a", "speedup_vs_default", 1.4)


def test_tm_form_auto_exports_the_fastest_form_with_its_timings(tiny_tm, tmp_path):
    from tmdeploy.bench.timing import Budget
    from tmdeploy.export import ExportOptions, FORMS, to_model_proto
    from tmdeploy.optimize import export_auto
    from tmdeploy.optimize import auto_form as auto

    with pytest.raises(UsageError, match="tmdeploy.optimize.export_auto"):
        to_model_proto(tiny_tm, ExportOptions(tm_form="auto"))
    quick = Budget(min_time=0.0, min_iterations=3, min_rounds=3, warmup=1)
    path = export_auto(tiny_tm, tmp_path / "auto.onnx", ExportOptions(tm_form="auto"), threads=1, budget=quick)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    timings = json.loads(meta[auto.TIMINGS_KEY])
    assert set(timings["score"]) == set(FORMS) and timings["score"]["normalized"] == 1.0
    assert meta["tm_form"] == timings["chosen"] == max(timings["score"], key=timings["score"].get)
    assert set(timings["batches"]) == {"1", "32"}


def test_screening_keeps_the_contenders_and_the_default():
    from tmdeploy.bench.timing import Samples
    from tmdeploy.optimize.profile import screen as _screen

    window = {"default": Samples(times=[3.0]), "fast": Samples(times=[1.0]), "close": Samples(times=[1.2]),
              "slow": Samples(times=[2.0])}
    assert _screen(window, dict.fromkeys(window), "default", 1.25) == ["slow"]


def test_an_interrupted_run_changes_no_file(tiny_tm, tmp_path):
    """SIGINT while candidates are built and checked: exit 130, one line, the folder exactly as it was."""
    import signal
    import time

    out = tmp_path / "out"
    out.mkdir()
    (out / "status.json").write_text('{"from": "last week"}\n')
    before = sorted(p.name for p in out.iterdir())
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "tmdeploy", "optimize", str(tiny_tm.path), "--threads", "1",
                             "--profile-s", "60", "--quiet", "--out", str(out)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    time.sleep(8)  # imports, export, the first candidates' checks; the copy into out comes after a minute of timing
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "tmdeploy: error: interrupted by SIGINT"
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / "status.json").read_text() == '{"from": "last week"}\n'


def test_quick_fills_only_what_was_left_unset():
    quick = OptimizeOptions(quick=True).effective()
    assert (quick.window_s, quick.profile_s, quick.accuracy_limit, quick.forms) == (0.2, 10.0, 256, ("normalized",))
    mine = OptimizeOptions(quick=True, window_s=1.0, profile_s=30.0, accuracy_limit=1000,
                           forms=("deferred",)).effective()
    assert (mine.window_s, mine.profile_s, mine.accuracy_limit, mine.forms) == (1.0, 30.0, 1000, ("deferred",))
    plain = OptimizeOptions().effective()
    assert (plain.window_s, plain.profile_s, plain.accuracy_limit, plain.forms) == (0.5, 90.0, None, None)


def test_target_is_the_deprecated_name_of_device(tiny_tm, tmp_path, capsys):
    assert OptimizeOptions(target="cuda") == OptimizeOptions(device="cuda")
    with pytest.raises(UsageError, match="give --device only"):
        OptimizeOptions(target="cpu", device="cuda")
    out = tmp_path / "out"
    argv = ["optimize", str(tiny_tm.path), "--target", "cpu", "--quick", "--precisions", "fp32", "--batch", "1",
            "--profile-s", "0", "--window-s", "0", "--accuracy-limit", "16", "--threads", "1", "--quiet",
            "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("deprecated") == 1 and "use --device" in err
    status = json.loads((out / "status.json").read_text())
    assert status["options"]["device"] == status["options"]["target"] == "cpu"


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


FP32_ONLY = ["--quick", "--precisions", "fp32", "--batch", "1", "--profile-s", "0", "--window-s", "0",
             "--accuracy-limit", "16", "--threads", "1", "--quiet"]


def test_a_target_in_the_way_is_refused_before_any_file_is_replaced(tiny_tm, tmp_path, capsys):
    """Issue 22: repro/inputs.json a directory came after candidates/ had been replaced. Now every target is
    checked first, and a later run replaces tmdeploy's files and keeps the user's."""
    out = tmp_path / "opt"
    argv = ["optimize", str(tiny_tm.path), *FP32_ONLY, "--out", str(out)]
    assert main(argv) == 0
    (out / "notes.txt").write_text("mine")
    (out / "repro" / "inputs.json").unlink()
    (out / "repro" / "inputs.json").mkdir()
    before = _snapshot(out)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "inputs.json is a directory" in err, err
    assert _snapshot(out) == before
    (out / "repro" / "inputs.json").rmdir()
    status = (out / "status.json").read_text()
    assert main(argv) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "repro" / "inputs.json").is_file()
    assert (out / "status.json").read_text() != status  # the new run's (its timings differ)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_the_commit_is_all_or_nothing(tmp_path):
    from tmdeploy.optimize.stage import _swap, commit

    files = ["candidates/a.onnx", "status.json", "repro/inputs.json"]
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    for root, words in ((scratch, "new"), (out, "old")):
        for name in files[:2] if root == out else files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(f"{words} {name}")
    (out / "notes.txt").write_text("mine")
    # a target that became a directory after the run's first check: refused before anything is replaced
    (out / "repro" / "inputs.json").mkdir(parents=True)
    before = _snapshot(out)
    with pytest.raises(UsageError, match="inputs.json is a directory"):
        commit(scratch, out, files, None)
    assert _snapshot(out) == before
    (out / "repro" / "inputs.json").rmdir()
    (out / "repro").rmdir()
    before = _snapshot(out)
    # a rename that fails halfway (status.json's new file is missing): the file already replaced is put back
    staging = tmp_path / "staging"
    (staging / "new" / "candidates").mkdir(parents=True)
    (staging / "new" / "candidates" / "a.onnx").write_text("new candidates/a.onnx")
    with pytest.raises(FileNotFoundError):
        _swap(out, staging, files)
    assert _snapshot(out) == before
    commit(scratch, out, files, None)
    assert {name: (out / name).read_text() for name in files} == {name: f"new {name}" for name in files}
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == [
        "candidates", "notes.txt", "repro", "status.json"]


def test_a_signal_during_the_commit_waits_until_it_is_done():
    """SIGINT during the final renames left opt/ half old, half new (issue 22): now it waits for the last one.
    In a fresh interpreter: a SIGINT to a process that has loaded OpenVINO crashes it (SIGSEGV, seen here)."""
    code = ("import os, signal, time\nfrom tmdeploy import signals\ndone = []\ntry:\n"
            "    with signals.handled():\n        with signals.deferred():\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n            time.sleep(0.05)\n"
            "            done.append('committed')\n"
            "except signals.Interrupted as err:\n    print('interrupted after', done, err.exit_code)\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.stdout.strip() == "interrupted after ['committed'] 130", done.stdout + done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_file_is_replaced(tmp_path):
    from tmdeploy.optimize.stage import commit

    scratch, out = tmp_path / "scratch", tmp_path / "out"
    for root in (scratch, out):
        root.mkdir()
        (root / "status.json").write_text(root.name)
    out.chmod(0o555)
    try:
        with pytest.raises(TmdeployError, match="permission denied"):
            commit(scratch, out, ["status.json"], None)
        assert (out / "status.json").read_text() == "out"
    finally:
        out.chmod(0o755)


def test_status_json_is_the_status_record_and_an_older_file_still_renders(run_dir):
    """status.json is Status.to_dict(): read back, it is the same file; one written with the old upper-case
    words (before bench's ok/failed/skipped) renders the same report."""
    from tmdeploy.optimize.status import Status
    from tmdeploy.report.optimize import to_markdown

    status = _strict((run_dir / "status.json").read_text())
    assert Status.from_dict(status).to_dict() == status
    assert {c["status"] for c in status["candidates"]} <= {"ok", "failed", "skipped"}
    old = json.loads(json.dumps(status))
    for c in old["candidates"]:
        c["status"] = c["status"].upper()
        for step in c["steps"]:
            step["status"] = step["status"].upper()
        del c["device"]  # a field older files lack
    assert to_markdown(old).replace("(OK)", "(ok)").replace("(FAILED)", "(failed)").replace(
        "(SKIPPED)", "(skipped)") == to_markdown(status)
