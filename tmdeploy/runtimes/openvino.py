"""OpenVINO, the optional CPU runtime that reads the ONNX file itself (``pip install "tmdeploy[openvino]"``):
its FP32 and FP16 files; its INT8 is not tried (OpenVINO's own quantizer makes its INT8 graphs)."""

from __future__ import annotations

from functools import cache
from typing import Callable

import numpy as np

from tmdeploy import signals
from tmdeploy.errors import TmdeployError, first_line
from tmdeploy.runtimes.base import Line, Runtime

LABEL = "OpenVINO"


def _require():
    from tmdeploy.optional import require

    return require("openvino", "openvino", LABEL)


def _probe() -> str | None:
    try:
        _require()
    except TmdeployError as err:
        return str(err)
    return None


def _version() -> str | None:
    return None if _probe() else _require().__version__


def compiled(model: bytes | str, threads: int | None = None, what: str = "the ONNX model"):
    """``model`` (ONNX bytes, or a file's path) read and compiled by OpenVINO for its CPU, computing in FP32.

    OpenVINO defaults to bf16 on CPUs with AVX512-BF16 or AMX (it did on the AMD EPYC here: errors up to 6e-3
    on a tiny model's FP32 logits), so FP32 is asked for; the latency hint, as callers run one request at a
    time.
    """
    ov = _require()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    try:
        with signals.alternate_stack_kept():  # its CPU plugin registers one it may free: signals then crash
            return core.compile_model(core.read_model(model), "CPU", config)
    except Exception as err:  # OpenVINO raises RuntimeError with its whole frontend log
        raise TmdeployError(f"{LABEL} cannot compile {what}: {first_line(err) or type(err).__name__}") from err


class Session:
    """The ONNX graph read and compiled by OpenVINO for the CPU; one infer request, fed host arrays (the
    bench stage's Session interface)."""

    def __init__(self, proto, threads: int | None = None, what: str = "the ONNX model") -> None:
        blob = proto.SerializeToString()
        self.artifact_bytes = len(blob)  # OpenVINO reads the .onnx file itself: it is what ships
        model = compiled(blob, threads, what)
        self.input_dtype = model.input(0).element_type.to_dtype()  # as OrtSession: what the graph takes
        self.request = model.create_infer_request()

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        feed = np.ascontiguousarray(x, dtype=self.input_dtype)
        # share_inputs: the feed is already contiguous in the graph's dtype, so the timed call copies nothing
        # in (~7 % of rn26's batch-32 call); outputs stay copied, since callers keep them past the next call
        return lambda: self.request.infer({0: feed}, share_inputs=True)[0]

    def fetch(self, output) -> np.ndarray:
        return np.asarray(output, dtype=np.float32)

    def close(self) -> None:
        pass


@cache
def runner_class():
    """The polygraphy runner, defined on first use so that reading this entry imports no polygraphy.

    Written here because polygraphy has no OpenVINO runner; OpenVINO reads the ONNX file itself, so this
    checks the file as OpenVINO will run it, not a conversion of it."""
    import time
    from collections import OrderedDict

    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    from tmdeploy import onnxfile

    class OpenVinoRunner(BaseRunner):
        def __init__(self, onnx_path, name="openvino"):
            super().__init__(name=name, prefix="openvino-runner")
            self.onnx_path = onnx_path

        def activate_impl(self):
            graph = onnxfile.load(self.onnx_path).graph  # a file tmdeploy refuses is refused with the same message
            # the file's names, matched by position: OpenVINO may name a port after a Cast it inserted (FP16)
            self.input_names, self.output_names = [i.name for i in graph.input], [o.name for o in graph.output]
            self.compiled = compiled(str(self.onnx_path), what=str(self.onnx_path))
            self.request = self.compiled.create_infer_request()

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for name, port in zip(self.input_names, self.compiled.inputs):
                meta.add(name, port.element_type.to_dtype(), [d.get_length() if d.is_static else -1
                                                              for d in port.partial_shape])
            return meta

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            results = self.request.infer([np.ascontiguousarray(feed_dict[name]) for name in self.input_names])
            self.inference_time = time.perf_counter() - start
            ports = self.compiled.outputs
            return OrderedDict((name, np.array(results[port])) for name, port in zip(self.output_names, ports))

        def deactivate_impl(self):
            del self.request, self.compiled

    return OpenVinoRunner


def _reproduce(runtime: Runtime, line: Line) -> dict:
    """polygraphy has no runner for it: the same Comparator check by ``tmdeploy check --runtime``."""
    import shlex

    command = (f"tmdeploy check {shlex.quote(line.checkpoint)} candidates/{line.name}.onnx --runtime {runtime.name} "
               f"--data {shlex.quote(line.data)} --seed {line.seed} --atol {line.atol:g} --rtol {line.rtol:g}")
    return {"command": command, "cwd": "the output folder", "tolerances": line.what,
            "why_not_polygraphy": f"polygraphy has no {LABEL} runner; this runs the same Comparator check "
                                  f"with tmdeploy's {LABEL} runner on the same held-out images"}


RUNTIMES = (
    Runtime("openvino", "cpu", LABEL, ("fp32", "fp16"),
            open=lambda runtime, proto, request: Session(proto, request.threads, f"{request.name}.onnx"),
            runner=lambda runtime, onnx_path, options: runner_class()(onnx_path, name=runtime.name),
            reproduce=_reproduce, probe=_probe, version=_version, suffix="openvino", check=True,
            bench=("fp32",), bench_prefix="openvino"),
)
