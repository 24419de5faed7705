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

from tmdeploy.bench.sessions import OrtSession, Session, Skip, TorchSession
from tmdeploy.runtimes import ALL as RUNTIME_ENTRIES
from tmdeploy.runtimes import Request, by_label, where
from tmdeploy.runtimes import get as get_runtime

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
    threads: int | None = None  # the ONNX runtimes' CPU threads (PyTorch's are set by the caller); None: default
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


_WHERE = {"cpu": "the CPU", "cuda": "NVIDIA GPUs"}


def _runtime(name: str, precision: str, ctx: Context) -> Session:
    """A runtime's own session (tmdeploy.runtimes) on the exported file; a note where it cannot run here."""
    entry = get_runtime(name, ctx.device)
    if entry is None:
        devices = where(name)
        raise Skip(f"{by_label(name)} runs on {' and '.join(_WHERE[d] for d in devices)} here: "
                   f"use --device {devices[0]}")
    reason = entry.probe()
    if reason:
        raise Skip(reason)
    proto = ctx.onnx(precision, entry.bench_int8_recipe if precision == "int8" else None)
    return entry.open(entry, proto, Request(ctx.threads, ctx.workdir, ctx.batches, f"{entry.bench_prefix}-{precision}"))


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
    # every other runtime's, from its entry: {bench_prefix}-{precision}, listed on either device (a note says
    # where it runs)
    *(Backend(f"{r.bench_prefix}-{p}", f"{r.label} {p.upper()}", p, partial(_runtime, r.name, p))
      for r in RUNTIME_ENTRIES for p in r.bench),
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
