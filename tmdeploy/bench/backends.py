"""The backends a checkpoint is benchmarked on, each built into a Session (:mod:`tmdeploy.bench.sessions`).

Lower precisions come from one call, :func:`tmdeploy.export.precision.lower_precision`, on the FP32 graph
that ``tmdeploy export`` writes; the CUDA-only sessions live in :mod:`tmdeploy.bench.cuda`.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from tmdeploy.bench.sessions import OpenVinoSession, OrtSession, Session, Skip, TorchSession
from tmdeploy.errors import TmdeployError
from tmdeploy.optional import require

if TYPE_CHECKING:  # the backend names are read without torch (option validation, the CLI)
    from tmdeploy.checkpoint import Deployable

BASELINE = "pytorch"


@dataclass
class Context:
    """What every backend builds from; the ONNX graphs are made once and shared between backends."""

    ckpt: Deployable
    device: str
    batches: tuple[int, ...]
    calib_data: str | None = None  # None: no calibration data, so no FP16/INT8 backend
    compile_backend: str = "inductor"
    threads: int | None = None  # onnxruntime's and OpenVINO's threads (PyTorch's are set by the caller); None: default
    _graphs: dict = field(default_factory=dict)
    _calibration: object = None  # calibration_loader(calib_data), made on first use
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def workdir(self) -> Path:
        """A scratch folder for files a runtime reads from disk (TensorRT engines), made on first use."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tmdeploy-bench-")
        return Path(self._tmp.name)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def onnx(self, precision: str = "fp32", int8_target: str | None = None):
        """The exported graph in ``precision`` (``int8_target``: whose INT8 recipe), exported or lowered once."""
        key = (precision, int8_target)
        if key not in self._graphs:
            self._graphs[key] = self._export() if precision == "fp32" else self._lower(precision, int8_target)
        return self._graphs[key]

    def _export(self):
        from tmdeploy.export import ExportOptions, to_model_proto

        return to_model_proto(self.ckpt, ExportOptions())

    def _lower(self, precision: str, int8_target: str | None):
        from tmdeploy.export.metadata import ModelMetadata, props
        from tmdeploy.export.precision import calibration_loader, lower_precision

        fp32 = self.onnx("fp32")
        meta = ModelMetadata.from_props(props(fp32))
        if self._calibration is None and self.calib_data is not None:  # once for FP16 and each INT8 recipe
            self._calibration = calibration_loader(self.calib_data)
        target = {"int8_target": int8_target} if int8_target else {}
        with warnings.catch_warnings():  # one line per FP16-truncated weight: noise in a benchmark's output
            warnings.filterwarnings("ignore", message="the float32 number", module="onnxconverter_common")
            return lower_precision(fp32, precision, meta=meta, calib_data=self.calib_data, show_progress=False,
                                   calibration=self._calibration(meta) if self._calibration else None, **target)


class TrtSession:
    """A TensorRT engine run by polygraphy's TrtRunner; inputs and outputs stay on the GPU."""

    def __init__(self, proto, workdir: Path, batches: tuple[int, ...], name: str) -> None:
        """Built into ``workdir/name.plan`` (with its sidecar) for every batch size in ``batches``."""
        import onnx

        from tmdeploy.engines.profiles import BatchProfile
        from tmdeploy.engines.tensorrt import INPUT_NAME, build_engine, open_engine

        onnx_path = workdir / f"{name}.onnx"
        if not onnx_path.exists():  # optimize has written the candidate's file there already
            onnx.save(proto, str(onnx_path))
        profile = BatchProfile(min(batches), max(batches), max(batches))
        engine = build_engine(onnx_path, batch=profile)
        self.artifact_bytes = Path(engine).stat().st_size
        self.runner, _ = open_engine(engine)
        self.input_name = INPUT_NAME

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        import torch

        xt = torch.from_numpy(x).cuda()
        return lambda: self.runner.infer({self.input_name: xt}, copy_outputs_to_host=False)["logits"]

    def fetch(self, output) -> np.ndarray:
        host = output.cpu() if hasattr(output, "cpu") else output.numpy()  # torch tensor or polygraphy DeviceView
        return np.asarray(host, dtype=np.float32)

    def close(self) -> None:
        self.runner.deactivate()


# ---- builders ---------------------------------------------------------------------------------------


def _module(ctx: Context):
    return ctx.ckpt.copy_module().to(ctx.device)


def _eager(ctx: Context) -> Session:
    return TorchSession(_module(ctx), ctx.device)


def _compiled(mode: str | None, ctx: Context) -> Session:
    import torch

    if mode is not None and ctx.compile_backend != "inductor":
        raise Skip(f"mode '{mode}' is inductor's; --compile-backend is {ctx.compile_backend}")
    # One static graph per batch size, as a server with fixed batch sizes would compile; a backend that
    # fails usually fails at the first call, which the timing loop records.
    module = torch.compile(_module(ctx), backend=ctx.compile_backend, mode=mode, dynamic=False)
    return TorchSession(module, ctx.device)


def _cuda_graph(ctx: Context) -> Session:
    from tmdeploy.bench.cuda import CudaGraphSession

    return CudaGraphSession(_module(ctx))


def _ort(precision: str, int8_target: str | None, ctx: Context) -> Session:
    proto = ctx.onnx(precision, int8_target)
    if ctx.device == "cuda":
        from tmdeploy.bench.cuda import OrtIoBindingSession

        return OrtIoBindingSession(proto)
    return OrtSession(proto, ["CPUExecutionProvider"], ctx.threads)


def _ort_cuda_graph(precision: str, ctx: Context) -> Session:
    from tmdeploy.bench.cuda import OrtCudaGraphSession

    return OrtCudaGraphSession(ctx.onnx(precision))


def _openvino(ctx: Context) -> Session:
    if ctx.device != "cpu":
        raise Skip("OpenVINO runs on the CPU here: use --device cpu")
    try:
        require("openvino", "openvino", "OpenVINO")
    except TmdeployError as err:
        raise Skip(str(err)) from None
    return OpenVinoSession(ctx.onnx("fp32"), ctx.threads)


def _trt(precision: str, ctx: Context) -> Session:
    from tmdeploy.engines.tensorrt import import_tensorrt

    if ctx.device != "cuda":
        raise Skip("TensorRT runs on NVIDIA GPUs: use --device cuda")
    try:
        import_tensorrt()
    except TmdeployError as err:
        raise Skip(str(err)) from None
    return TrtSession(ctx.onnx(precision, "tensorrt" if precision == "int8" else None), ctx.workdir, ctx.batches,
                      f"trt-{precision}")


@dataclass(frozen=True)
class Backend:
    name: str
    label: str
    precision: str
    build: Callable[[Context], Session]
    cuda_only: bool = False


BACKENDS = (
    Backend(BASELINE, "PyTorch eager", "fp32", _eager),
    Backend("torch-compile", "torch.compile", "fp32", partial(_compiled, None)),
    Backend("torch-compile-max-autotune", "torch.compile max-autotune-no-cudagraphs", "fp32",
            partial(_compiled, "max-autotune-no-cudagraphs"), cuda_only=True),
    Backend("torch-compile-reduce-overhead", "torch.compile reduce-overhead", "fp32",
            partial(_compiled, "reduce-overhead"), cuda_only=True),
    Backend("pytorch-cuda-graph", "PyTorch CUDA graph", "fp32", _cuda_graph, cuda_only=True),
    Backend("ort-fp32", "ONNX Runtime FP32", "fp32", partial(_ort, "fp32", None)),
    Backend("ort-fp16", "ONNX Runtime FP16", "fp16", partial(_ort, "fp16", None)),
    Backend("ort-fp32-cuda-graph", "ONNX Runtime FP32, CUDA graph", "fp32", partial(_ort_cuda_graph, "fp32"),
            cuda_only=True),
    Backend("ort-fp16-cuda-graph", "ONNX Runtime FP16, CUDA graph", "fp16", partial(_ort_cuda_graph, "fp16"),
            cuda_only=True),
    Backend("ort-int8", "ONNX Runtime INT8 (onnxruntime recipe)", "int8", partial(_ort, "int8", "onnxruntime")),
    Backend("ort-int8-trt", "ONNX Runtime INT8 (TensorRT recipe)", "int8", partial(_ort, "int8", "tensorrt")),
    Backend("openvino-fp32", "OpenVINO FP32", "fp32", _openvino),
    Backend("trt-fp32", "TensorRT FP32", "fp32", partial(_trt, "fp32")),
    Backend("trt-fp16", "TensorRT FP16", "fp16", partial(_trt, "fp16")),
    Backend("trt-int8", "TensorRT INT8", "int8", partial(_trt, "int8")),
)
NAMES = tuple(b.name for b in BACKENDS)


def default_names(device: str) -> tuple[str, ...]:
    """Every backend that can run on ``device`` (TensorRT included: without it, its note says why)."""
    return tuple(b.name for b in BACKENDS if device == "cuda" or not b.cuda_only)


def by_name(name: str) -> Backend:
    return next(b for b in BACKENDS if b.name == name)


def predict_all(session: Session, images: np.ndarray, chunk: int) -> np.ndarray:
    """Logits for every image, in batches of exactly ``chunk`` (the last one padded with its final image)
    so compiled graphs and engine profiles see only a batch size they were benchmarked with."""
    logits = []
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        n = len(part)
        if n < chunk:
            part = np.concatenate([part, np.repeat(part[-1:], chunk - n, axis=0)])
        logits.append(session.fetch(session.bind(part)())[:n])
    return np.concatenate(logits)
