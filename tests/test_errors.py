"""Everything a user can hand tmdeploy wrong, through the real command line.

Every case runs ``python -m tmdeploy ...`` in its own directory, whose target ``out/model.onnx`` already
holds a previous artifact, and checks: the exit status (2 usage, 1 failure), one line on stderr naming the
problem and no traceback, and that the directory is byte-for-byte what it was (previous artifact intact, no
partial or temporary file, no report written). The CLI cases run concurrently (each one pays for importing
torch), then each is asserted as its own test.

Beside the battery: an export killed mid-write, concurrent exports to one target, an engine built for
another TensorRT or GPU, and runtime inputs that tests/test_runtime.py does not already cover.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from helpers import ENV, MISMATCHED_GRAPHS, mismatched_graph, one_line_error, partly_written, snapshot, tmdeploy
from test_engines import H100, fake_engine
from test_runtime import write_model

from tmdeploy import checkpoint, models, runtime
from tmdeploy.cli import build_parser
from tmdeploy.engines import tensorrt as trt_engine
from tmdeploy.errors import TmdeployError
from tmdeploy.export import metadata

CLASSES = ["cat", "dog", "bird"]
TARGET = Path("out/model.onnx")
def export_accepts(option: str) -> bool:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return option in sub.choices["export"]._option_string_actions


def on_cuda_without_provider(command: str, *argv: str):
    """A case running ``command`` on the checkpoint on CUDA; skipped where onnxruntime has the CUDA provider."""
    def case(d, i):
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("this onnxruntime has the CUDA provider")
        return [command, link(i, d), *argv]

    return case


class Payload:
    """Unpickled by plain pickle, this creates ``marker`` (builtins.open(marker, "w")): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


# ---- shared inputs ----------------------------------------------------------------------------------


@dataclass
class Inputs:
    root: Path
    model: torch.nn.Module
    card: checkpoint.ModelCard
    good: Path  # tmdeploy checkpoint (.pt)
    tiny_onnx: Path  # a small real ONNX classifier with tmdeploy metadata (tests/test_runtime.write_model)
    previous: bytes  # what out/model.onnx holds before every case


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    model = models.create("rn26", num_classes=len(CLASSES), in_chans=1).eval()
    card = checkpoint.card_for(model, CLASSES, [0.5], [0.25], input_size=(1, 16, 16))
    good = checkpoint.save(root / "good.pt", model, card)
    tiny = write_model(root / "tiny.onnx")
    return Inputs(root, model, card, good, tiny, previous=tiny.read_bytes())


def state(inputs: Inputs) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in inputs.model.state_dict().items()}


def save_torch(path: Path, inputs: Inputs, state_dict=None, **card_changes) -> Path:
    """The good checkpoint with some of its saved fields (card or format) replaced, as a file would hold them."""
    payload = {**checkpoint.card_to_dict(inputs.card), **card_changes,
               "state_dict": state(inputs) if state_dict is None else state_dict}
    torch.save(payload, path)
    return path


def link(inputs: Inputs, d: Path, name: str = "good.pt") -> str:
    (d / name).symlink_to(inputs.good)
    return name


def export(ckpt, *extra):
    return ["export", ckpt, "--out", TARGET, *extra]


# ---- the cases: setup(case_dir, inputs) -> argv, run in case_dir -------------------------------------


def pickle_payload(d, inputs):
    torch.save({"state_dict": state(inputs), "extra": Payload(d / "PAYLOAD_RAN")}, d / "evil.pt")
    return export("evil.pt")


def legacy_pickle_payload(d, inputs):
    torch.save({"extra": Payload(d / "PAYLOAD_RAN")}, d / "evil.pt", _use_new_zipfile_serialization=False)
    return export("evil.pt")


def empty(d, inputs):
    (d / "empty.pt").write_bytes(b"")
    return export("empty.pt")


def truncated(d, inputs):
    data = inputs.good.read_bytes()
    (d / "cut.pt").write_bytes(data[: len(data) // 2])
    return export("cut.pt")


def random_bytes(d, inputs):
    (d / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return export("noise.pt")


def directory(d, inputs):
    (d / "ckpt.pt").mkdir()
    return export("ckpt.pt")


def not_a_dict(d, inputs):
    torch.save([torch.zeros(2)], d / "list.pt")
    return export("list.pt")


def bare_state_dict(d, inputs):
    torch.save(state(inputs), d / "bare.pt")
    return export("bare.pt")


def bare_unknown_arch(d, inputs):
    torch.save(state(inputs), d / "bare.pt")
    return export("bare.pt", "--arch", "rn99")


def bare_wrong_num_classes(d, inputs):
    torch.save(state(inputs), d / "bare.pt")
    return export("bare.pt", "--arch", "rn26", "--num-classes", "5")


def bare_safetensors(d, inputs):
    save_file(state(inputs), str(d / "bare.safetensors"))
    return export("bare.safetensors")


def truncated_safetensors(d, inputs):
    save_file(state(inputs), str(d / "w.safetensors"))
    data = (d / "w.safetensors").read_bytes()
    (d / "w.safetensors").write_bytes(data[: len(data) // 2])
    return export("w.safetensors")


def unknown_arch(d, inputs):
    return export(save_torch(d / "ckpt.pt", inputs, arch="rn99").name)


def shape_mismatch(d, inputs):
    sd = state(inputs)
    sd["stages.1.0.branch.0.0.weight"] = torch.zeros(40, 64, 1, 1)  # the first that does not fit ...
    sd["head.fc.weight"] = torch.zeros(5, 256)  # ... not this later one
    return export(save_torch(d / "ckpt.pt", inputs, sd).name)


def nan_weights(d, inputs):
    sd = state(inputs)
    sd["stages.1.0.branch.1.0.weight"][0, 0, 1, 1] = float("nan")
    return export(save_torch(d / "ckpt.pt", inputs, sd).name)


def inf_weights_safetensors(d, inputs):
    model = models.create("rn26", num_classes=len(CLASSES), in_chans=1)
    model.load_state_dict(state(inputs))
    with torch.no_grad():
        model.head.fc.bias[1] = float("inf")
    checkpoint.save(d / "ckpt.safetensors", model, inputs.card)
    return export("ckpt.safetensors")


def complex_weights(d, inputs):
    sd = state(inputs)
    sd["head.fc.weight"] = sd["head.fc.weight"].to(torch.complex64) * (1 + 1j)
    return export(save_torch(d / "ckpt.pt", inputs, sd).name)


def card_case(**changes):
    """A case exporting the good checkpoint with these saved fields replaced."""
    return lambda d, inputs: export(save_torch(d / "ckpt.pt", inputs, **changes).name)


def check_mismatched_graph(name):
    """A case checking the checkpoint against an ONNX file whose metadata does not describe its graph."""
    return lambda d, i: ["check", link(i, d), mismatched_graph(d / "bad.onnx", name).name]


def unwritable_out(d, inputs):
    make_unwritable(d / "out")
    return export(link(inputs, d))


def onnx_without_metadata(d, name="plain.onnx"):
    model = onnx.load(str(write_model(d / name)))
    del model.metadata_props[:]
    onnx.save(model, str(d / name))
    return name


def truncated_onnx(d, inputs):
    data = inputs.tiny_onnx.read_bytes()
    (d / "cut.onnx").write_bytes(data[: len(data) // 2])
    return "cut.onnx"


def not_utf8_onnx(d, inputs):
    data = inputs.tiny_onnx.read_bytes().replace(b"GlobalAveragePool", b"GlobalAveragePoo\xff", 1)
    (d / "odd.onnx").write_bytes(data)
    return ["info", "odd.onnx"]


def onnx_with_markup_metadata(d, inputs):
    model = onnx.load(str(d / onnx_without_metadata(d)))  # no tmdeploy metadata: info shows metadata_props
    model.metadata_props.add(key="[/note]", value="[bold]not markup[/]")
    onnx.save(model, str(d / "marked.onnx"))
    return ["info", "marked.onnx"]


def text_file(d, inputs):
    (d / "readme.onnx").write_text("this is not an ONNX file\n" * 20)
    return ["info", "readme.onnx"]


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, Inputs], list]
    status: int
    message: str | tuple[str, ...]  # distinctive part(s) of the one stderr line (for status 0: of stdout)
    traceback: bool = False  # --debug: a traceback, then the same one line last
    absent: tuple[str, ...] = ()  # files that must not exist afterwards (besides "nothing changed")


# --precision fp32|fp16|int8 is being added to export; until then argparse refuses the option itself (also exit 2).
PRECISION = ("--precision", "int4") if export_accepts("--precision") else "unrecognized arguments: --precision int4"
CASES = [
    # untrusted checkpoints
    Case("pickle-payload", pickle_payload, 1, "refusing to load evil.pt: it holds objects other than tensors",
         absent=("PAYLOAD_RAN",)),
    Case("legacy-pickle-payload", legacy_pickle_payload, 1, "evil.pt is not a PyTorch checkpoint",
         absent=("PAYLOAD_RAN",)),
    Case("empty", empty, 1, "checkpoint is empty (0 bytes): empty.pt"),
    Case("truncated", truncated, 1, "cannot read checkpoint cut.pt: file is truncated or corrupt"),
    Case("random-bytes", random_bytes, 1, "noise.pt is not a PyTorch checkpoint"),
    Case("directory", directory, 1, "checkpoint path is a directory, not a file: ckpt.pt"),
    Case("missing", lambda d, i: export("missing.pt"), 1, "checkpoint not found: missing.pt"),
    Case("not-a-dict", not_a_dict, 1, "list.pt holds a list, not a checkpoint dict"),
    Case("bare-state-dict", bare_state_dict, 2, "bare.pt is a bare state_dict without tmdeploy metadata: "
         "name its architecture with --arch"),
    Case("bare-safetensors", bare_safetensors, 2, "bare.safetensors is a bare state_dict without tmdeploy metadata"),
    Case("bare-unknown-arch", bare_unknown_arch, 2, "unknown architecture 'rn99'; choose one of: dn100"),
    Case("bare-wrong-num-classes", bare_wrong_num_classes, 1,
         "tensor 'head.fc.weight' has shape (3, 256), the architecture needs (5, 256)"),
    Case("truncated-safetensors", truncated_safetensors, 1, "cannot read safetensors file w.safetensors"),
    Case("unknown-arch", unknown_arch, 1, "ckpt.pt: unknown architecture 'rn99'"),
    Case("shape-mismatch", shape_mismatch, 1, "checkpoint does not fit rn26: tensor 'stages.1.0.branch.0.0.weight' "
         "has shape (40, 64, 1, 1), the architecture needs (48, 64, 1, 1)"),
    Case("nan-weights", nan_weights, 1, "weight 'stages.1.0.branch.1.0.weight' contains NaN or Inf values; "
         "refusing to export it"),
    Case("inf-weights-safetensors", inf_weights_safetensors, 1, "weight 'head.fc.bias' contains NaN or Inf"),
    Case("card-input-size-float", card_case(input_size=[1, 16.5, 16]), 1,
         "checkpoint metadata is incomplete or malformed (TypeError: input_size must be integers, got [1, 16.5, 16])"),
    Case("card-input-size-strings", card_case(input_size=["1", "16", "16"]), 1, "input_size must be integers"),
    Case("card-input-size-bool", card_case(input_size=[True, 16, 16]), 1, "input_size must be integers"),
    Case("card-mean-strings", card_case(mean=["0.5"]), 1, "mean and std must be numbers"),
    Case("card-format-version-0", card_case(format_version=0), 1,
         "checkpoint format version 0 is not one this tmdeploy reads (1..1)"),
    Case("card-format-version-bool", card_case(format_version=True), 1, "checkpoint format version True is not"),
    Case("complex-weights", complex_weights, 1,
         "tensor 'head.fc.weight' is torch.complex64, the architecture needs torch.float32"),
    # export options and the output
    Case("num-classes-with-a-card", lambda d, i: export(link(i, d), "--num-classes", "-1"), 2,
         "--num-classes must be in 1..1000000, got -1"),
    Case("in-chans-with-a-card", lambda d, i: export(link(i, d), "--in-chans", "1000"), 2,
         "--in-chans must be in 1..64, got 1000"),
    Case("triton-out-is-a-file", lambda d, i: export(link(i, d), "--format", "triton"), 2,
         "--out out/model.onnx exists and is not a directory"),
    Case("opset-too-old", lambda d, i: export(link(i, d), "--opset", "12"), 2, "--opset 12 is too old"),
    Case("opset-too-new", lambda d, i: export(link(i, d), "--opset", "999"), 2, "--opset 999 is newer than"),
    Case("opset-not-a-number", lambda d, i: export(link(i, d), "--opset", "x"), 2,
         "argument --opset: invalid int value: 'x'"),
    Case("format", lambda d, i: export(link(i, d), "--format", "tflite"), 2,
         "unknown --format 'tflite'; choose one of: onnx, trt, triton"),
    Case("batch-not-numbers", lambda d, i: export(link(i, d), "--format", "trt", "--batch", "a,b,c"), 2,
         "batch profile 'a,b,c': expected N or MIN,OPT,MAX"),
    Case("trt-with-onnxruntime-int8", lambda d, i: export(link(i, d), "--format", "trt", "--out", "m.plan",
                                                          "--precision", "int8", "--int8-target", "onnxruntime"), 2,
         ("--format trt builds a TensorRT engine", "export it with --int8-target tensorrt")),
    Case("batch-order", lambda d, i: export(link(i, d), "--format", "triton", "--batch", "8,4,2"), 2,
         "batch profile '8,4,2': expected MIN <= OPT <= MAX"),
    Case("precision", lambda d, i: export(link(i, d), "--precision", "int4"), 2, PRECISION),
    Case("tm-form", lambda d, i: export(link(i, d), "--tm-form", "fancy"), 2, "unknown --tm-form 'fancy'"),
    Case("unknown-option", lambda d, i: export(link(i, d), "--frobnicate"), 2, "unrecognized arguments: --frobnicate"),
    Case("unknown-command", lambda d, i: ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    Case("unwritable-out-dir", unwritable_out, 1, "cannot write out/model.onnx"),
    # ONNX files
    Case("info-truncated", lambda d, i: ["info", truncated_onnx(d, i)], 1,
         "cut.onnx is not a valid ONNX file (truncated or another format)"),
    Case("info-text-file", text_file, 1, "readme.onnx is not a valid ONNX file"),
    Case("info-not-utf8", not_utf8_onnx, 1, "odd.onnx is not a valid ONNX file: its NodeProto.op_type is not UTF-8"),
    Case("info-missing", lambda d, i: ["info", "gone.onnx"], 1, "ONNX file not found: gone.onnx"),
    Case("info-without-metadata", lambda d, i: ["info", onnx_without_metadata(d)], 0,
         "note: the ONNX file has no tmdeploy metadata"),
    Case("info-metadata-is-not-markup", onnx_with_markup_metadata, 0, "[bold]not markup[/]"),
    Case("check-without-metadata", lambda d, i: ["check", link(i, d), onnx_without_metadata(d)], 1,
         "the ONNX file has no tmdeploy metadata (was it exported by tmdeploy?)"),
    Case("check-without-checkpoint", lambda d, i: ["check", onnx_without_metadata(d)], 2,
         "check needs the source checkpoint too: tmdeploy check CHECKPOINT MODEL.onnx"),
    Case("check-truncated-onnx", lambda d, i: ["check", link(i, d), truncated_onnx(d, i)], 1,
         "cut.onnx is not a valid ONNX file"),
    Case("check-bad-batch", lambda d, i: ["check", link(i, d), "model.onnx", "--batch", "1,x"], 2,
         "--batch takes comma-separated integers, got '1,x'"),
    *(Case(f"check-{name}", check_mismatched_graph(name), 1, ("bad.onnx", message))
      for name, (_, message) in MISMATCHED_GRAPHS.items()),
    # outputs refused before the work: never one of the inputs, never a file where a folder goes
    Case("check-save-inputs-is-the-checkpoint", lambda d, i: ["check", link(i, d), TARGET, "--save-inputs", "good.pt"],
         2, "--save-inputs good.pt is the input file good.pt; refusing to overwrite it"),
    Case("check-save-outputs-is-the-onnx-file", lambda d, i: ["check", link(i, d), TARGET, "--save-outputs", TARGET],
         2, "--save-outputs out/model.onnx is the input file"),
    Case("check-report-dir-is-a-file", lambda d, i: ["check", link(i, d), TARGET, "--report-dir", "good.pt"], 2,
         "--report-dir good.pt exists and is not a directory"),
    Case("bench-report-dir-is-dev-null", lambda d, i: ["bench", link(i, d), "--report-dir", "/dev/null"], 2,
         "--report-dir /dev/null exists and is not a directory"),
    Case("demo-out-dir-is-a-file", lambda d, i: ["demo", "--out-dir", TARGET], 2,
         "--out-dir out/model.onnx exists and is not a directory"),
    # a torch checkpoint under a model's suffix would be taken for an ONNX file or engine by later commands
    Case("train-out-with-a-model-suffix", lambda d, i: ["train", "--out", "t.onnx", "--epochs", "1"], 2,
         "--out t.onnx: a checkpoint is written as .pt, .pth, .ckpt, .safetensors, not .onnx", absent=("t.onnx",)),
    Case("demo-bad-option-makes-nothing", lambda d, i: ["demo", "--epochs", "0", "--out-dir", "new"], 2,
         "--epochs must be in 1..1000000, got 0", absent=("new",)),
    # serve: values as the server would really hold them
    Case("serve-port-plus-two-overflows", lambda d, i: ["serve", TARGET, "--port", "65534"], 2,
         "port 65534: the metrics port would be 65536, beyond 65535"),
    Case("serve-max-batch-huge", lambda d, i: ["serve", TARGET, "--max-batch", "99999999999999999999"], 2,
         "max_batch_size 99999999999999999999: expected an integer in 1..4096"),
    Case("serve-queue-delay-beyond-a-day", lambda d, i: ["serve", TARGET, "--max-queue-delay-us", "10" + "0" * 20], 2,
         "max_queue_delay_us 1000000000000000000000: expected an integer in 0..86400000000"),
    Case("check-cuda-without-onnxruntime-gpu", on_cuda_without_provider("check", "model.onnx", "--device", "cuda"), 1,
         ("this onnxruntime has no CUDAExecutionProvider", "onnxruntime-gpu")),
    Case("optimize-cuda-without-onnxruntime-gpu",
         on_cuda_without_provider("optimize", "--target", "cuda", "--out", "out"), 1,
         ("this onnxruntime has no CUDAExecutionProvider", "onnxruntime-gpu")),
    # --debug, before or after the command: the traceback, then the same one line
    Case("debug-before", lambda d, i: ["--debug", *export("missing.pt")], 1, "checkpoint not found: missing.pt",
         traceback=True),
    Case("debug-after", lambda d, i: [*export("missing.pt"), "--debug"], 1, "checkpoint not found: missing.pt",
         traceback=True),
]


# ---- running the battery ----------------------------------------------------------------------------


_IMMUTABLE: list[Path] = []


def make_unwritable(path: Path) -> None:
    """chmod 0555; where that does not stop us (root), the immutable attribute; else skip."""
    path.chmod(0o555)
    if not os.access(path, os.W_OK) and os.geteuid() != 0:
        return
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        _IMMUTABLE.append(path)
        return
    path.chmod(0o755)
    pytest.skip("cannot make a directory unwritable here (root without chattr)")


@dataclass
class Outcome:
    dir: Path
    result: subprocess.CompletedProcess | None
    before: dict
    after: dict
    skip: str | None = None


@pytest.fixture(scope="module")
def battery(request, inputs, tmp_path_factory):
    """Set up and run the selected cases concurrently; {case id: Outcome}."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if getattr(item, "originalname", None) == "test_cli_error" and hasattr(item, "callspec")}
    root = tmp_path_factory.mktemp("battery")
    prepared = {}
    for case in CASES:
        if case.id not in wanted:
            continue
        d = root / case.id
        (d / TARGET.parent).mkdir(parents=True)
        (d / TARGET).write_bytes(inputs.previous)
        try:
            argv = case.setup(d, inputs)
        except pytest.skip.Exception as err:
            prepared[case.id] = Outcome(d, None, {}, {}, skip=str(err))
            continue
        prepared[case.id] = (d, argv, snapshot(d))

    def run(item):
        d, argv, before = item
        result = tmdeploy(*argv, cwd=d)
        return Outcome(d, result, before, snapshot(d))

    outcomes = {k: v for k, v in prepared.items() if isinstance(v, Outcome)}
    jobs = {k: v for k, v in prepared.items() if not isinstance(v, Outcome)}
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        outcomes.update(zip(jobs, pool.map(run, jobs.values())))
    yield outcomes
    for path in _IMMUTABLE:
        subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o755)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_error(battery, inputs, case):
    outcome = battery[case.id]
    if outcome.skip:
        pytest.skip(outcome.skip)
    result = outcome.result
    context = f"argv {result.args[3:]}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == case.status, context
    lines = result.stderr.splitlines()
    expected = (case.message,) if isinstance(case.message, str) else case.message
    if case.status == 0:
        assert result.stderr == "", context
        assert all(m in result.stdout for m in expected), context
    elif case.traceback:
        assert "Traceback (most recent call last)" in result.stderr, context
        assert lines[-1] == f"tmdeploy: error: {case.message}", context
    else:
        one_line_error(result, case.status, *expected)
    # nothing written, nothing changed: the previous artifact is intact and no partial or temporary file is left
    assert outcome.after == outcome.before, context
    assert (outcome.dir / TARGET).read_bytes() == inputs.previous
    for name in case.absent:
        assert not (outcome.dir / name).exists(), f"{name} exists: {context}"


def test_the_refused_payload_is_live(battery, inputs):
    """The pickle the CLI refused really would have run code: plain unpickling creates the marker."""
    d = battery["pickle-payload"].dir if "pickle-payload" in battery else None
    if d is None:
        pytest.skip("the pickle-payload case was not selected")
    evil, marker = d / "evil.pt", d / "PAYLOAD_RAN"
    assert not marker.exists()
    with pytest.raises(TmdeployError, match="could run code when unpickled"):
        checkpoint.load(evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # what a careless loader does: the payload runs
    assert marker.exists()


# ---- killed mid-write, and concurrent writers --------------------------------------------------------


@pytest.mark.slow
def test_export_killed_mid_write_leaves_the_previous_artifact(tmp_path, big_checkpoint, inputs):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "model.onnx"
    target.write_bytes(inputs.previous)
    proc = subprocess.Popen([sys.executable, "-m", "tmdeploy", "export", str(big_checkpoint), "--out", str(target)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = None
    try:
        while proc.poll() is None:  # kill the moment the temporary file holds some of the bytes
            partial = partly_written(out, target.name)
            if partial is not None:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and partial is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert partial is not None, f"the export finished (status {proc.returncode}) before it could be killed mid-write"
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == inputs.previous  # the previous artifact is intact ...
    others = sorted(p.name for p in out.iterdir() if p != target)
    assert others == [partial.name], others  # ... and the partial bytes lie only under the temporary name


@pytest.mark.slow
def test_concurrent_exports_to_one_target_leave_one_complete_file(tmp_path, big_checkpoint):
    target = tmp_path / "shared.onnx"
    procs = [subprocess.Popen([sys.executable, "-m", "tmdeploy", "export", str(big_checkpoint), "--out", str(target)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert [p.name for p in tmp_path.iterdir()] == ["shared.onnx"]  # no temporary file left behind
    onnx.checker.check_model(str(target), full_check=True)
    meta = metadata.read(target)
    assert meta.input_size == [1, 16, 16] and len(meta.class_names) == 50_000
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    (logits,) = session.run(["logits"], {"images": x})
    ckpt = checkpoint.load(big_checkpoint)
    with torch.no_grad():
        expected = ckpt.build_model()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)


# ---- engines ----------------------------------------------------------------------------------------


class FakeTensorRT:
    __version__ = H100.tensorrt


@pytest.mark.parametrize("environment, message", [
    (replace(H100, tensorrt="10.14.1"), r"built with TensorRT 10\.13\.3\.9 .*this machine has TensorRT 10\.14\.1"),
    (trt_engine.Environment(H100.tensorrt, "NVIDIA A100-SXM4-80GB", "8.0"),
     r"for NVIDIA H100 80GB HBM3 \(sm 9\.0\), but this machine has .*NVIDIA A100-SXM4-80GB \(sm 8\.0\)"),
])
def test_engine_built_for_another_tensorrt_or_gpu_is_refused_before_it_is_opened(tmp_path, monkeypatch,
                                                                                  environment, message):
    """runtime.load checks the sidecar against this machine before TensorRT sees the engine's bytes."""
    onnx_path = write_model(tmp_path / "tiny.onnx")
    engine, _ = fake_engine(tmp_path, onnx_path, payload=b"not a plan: TensorRT must never be asked to read it")
    monkeypatch.setattr(trt_engine, "import_tensorrt", lambda: FakeTensorRT)
    monkeypatch.setattr(trt_engine, "current_environment", lambda version, device=None: environment)
    with pytest.raises(TmdeployError, match=message + r".*rebuild the engine here from .*tiny\.onnx") as err:
        runtime.load(engine)
    assert "\n" not in str(err.value)


def test_engine_without_its_sidecar_is_refused(tmp_path, monkeypatch):
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"engine bytes")
    monkeypatch.setattr(trt_engine, "import_tensorrt", lambda: FakeTensorRT)
    with pytest.raises(TmdeployError, match="model.plan has no sidecar model.plan.json: rebuild the engine"):
        runtime.load(engine)


# ---- runtime inputs beyond tests/test_runtime.py -----------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return runtime.load(write_model(tmp_path_factory.mktemp("rt") / "plain.onnx"))


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 1, 1, 8, 8), np.float32), r"expected images of shape \(N, 1, 8, 8\), got \(1, 1, 1, 8, 8\)"),
    (np.zeros((8, 8), np.float32), r"expected images of shape \(N, 1, 8, 8\), got \(8, 8\)"),
    (np.float32(0.5), r"got \(\)"),
    ([[0.5], [0.5, 0.5]], "images are not an array"),
    (np.full((2, 1, 8, 8), 1e300), r"NaN or Inf in 2 row\(s\) \(0, 1\)"),  # finite float64, Inf as float32
    (np.full((1, 1, 8, 8), "x"), "expected normalized float images, got <U1"),
    (np.zeros((1, 1, 8, 8), np.complex64), "expected normalized float images, got complex64"),
    (torch.zeros(1, 1, 8, 8, dtype=torch.int64), "expected normalized float images, got int64"),
])
def test_runtime_refuses_more_malformed_inputs(predictor, images, message):
    with pytest.raises(TmdeployError, match=message):
        predictor.predict(images)


def test_runtime_refuses_metadata_that_does_not_describe_the_graph_outputs(tmp_path):
    path = write_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    props = metadata.props(model)
    metadata.write(model, replace(metadata.ModelMetadata.from_props(props), class_names=["cat", "dog"]))
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(TmdeployError, match=r"names 2 classes, but the graph's logits have shape \['batch', 3\]"):
        runtime.load(tmp_path / "two.onnx")
    metadata.write(model, replace(metadata.ModelMetadata.from_props(props), outputs=["logits", "patch_logits"]))
    onnx.save(model, str(tmp_path / "patch.onnx"))
    with pytest.raises(TmdeployError, match="names output.s. patch_logits, but the graph has logits"):
        runtime.load(tmp_path / "patch.onnx")
