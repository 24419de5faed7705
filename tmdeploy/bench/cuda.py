"""The CUDA-only parts of the benchmark: event timing, PyTorch CUDA graphs, onnxruntime on its CUDA provider.

Kept apart because no CI machine here has a GPU: this file runs only on ``--device cuda``
(benchmarks/GPU.md gives the procedure on a lent H100/H200; tests/test_cuda.py tests it there).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tmdeploy import onnxfile
from tmdeploy.bench.sessions import OrtSession, Skip, TorchSession
from tmdeploy.errors import TmdeployError


def event_timer(call: Callable[[], object]) -> float:
    """GPU time between two CUDA events on the current stream, in seconds.

    Exact for work queued on that stream (PyTorch, CUDA graphs). onnxruntime's IO binding run and
    polygraphy's TrtRunner return only after their own streams finish, so the end event, recorded
    after the call returns, still comes after all of their work.
    """
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


class CudaGraphSession(TorchSession):
    """The model captured once per batch size into a CUDA graph: one launch per call, no Python per layer."""

    def __init__(self, module) -> None:
        super().__init__(module, "cuda")
        self._graphs: dict[tuple, tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):  # let cuDNN pick its algorithms before the capture freezes them
                self.module(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self.module(static_in)
        return static_in, graph, static_out

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        xt = torch.from_numpy(x).cuda()
        if xt.shape not in self._graphs:
            self._graphs[xt.shape] = self._capture(xt)
        static_in, graph, static_out = self._graphs[xt.shape]
        static_in.copy_(xt)

        def call():
            graph.replay()
            return static_out

        return call


def cuda_providers(cuda_options: dict | None = None, tensorrt_options: dict | None = None) -> list:
    """onnxruntime's CUDA provider (CPU fallback after it; TensorRT's before it with ``tensorrt_options``),
    or Skip where this onnxruntime has none."""
    try:
        return onnxfile.providers("cuda", cuda_options, tensorrt_options)
    except TmdeployError as err:
        raise Skip(str(err)) from None


def node_placement(proto, providers: list) -> Counter:
    """How many nodes of each (provider, op type) onnxruntime really ran, after its fusions, read from its
    own profile (the session's API says only which providers it has, not which node went where)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="tmdeploy-placement-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
        graph_input = session.get_inputs()[0]
        dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        shape = [d if isinstance(d, int) else 1 for d in graph_input.shape]
        session.run(None, {graph_input.name: np.zeros(shape, dtype)})
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = {(e["name"], e["args"]["provider"], e["args"]["op_name"]) for e in events
             if e.get("cat") == "Node" and "provider" in e.get("args", {})}
    return Counter((provider, op) for _, provider, op in nodes)


def placement_note(placement: Counter) -> str:
    """One line saying where the nodes ran and, for QDQ graphs, in what arithmetic the convolutions ran."""
    total = sum(placement.values())
    on_gpu = {name: sum(n for (provider, _), n in placement.items() if provider == full)
              for name, full in (("TensorRT", onnxfile.TENSORRT), ("CUDA", onnxfile.CUDA))}
    note = ", ".join(f"{n}/{total} nodes on {name}" for name, n in on_gpu.items() if n or name == "CUDA")
    on_cpu = sorted({op for (provider, op) in placement if provider not in (onnxfile.CUDA, onnxfile.TENSORRT)})
    if on_cpu:
        note += f" (on the CPU: {', '.join(on_cpu)})"
    ops = {op for (_, op) in placement}
    if ops & {"QLinearConv", "ConvInteger"}:
        note += "; convolutions in INT8"
    elif "DequantizeLinear" in ops:
        note += ("; convolutions in float between DequantizeLinear/QuantizeLinear (no QDQ pair was fused "
                 "into an INT8 kernel): INT8 rounding, float speed")
    return note


class OrtIoBindingSession(OrtSession):
    """onnxruntime on CUDA with IO binding: the input lives on the GPU and the output stays there.

    With ``tensorrt_options``, onnxruntime's TensorRT provider runs what it takes, and CUDA the rest."""

    def __init__(self, proto, cuda_options: dict | None = None, tensorrt_options: dict | None = None) -> None:
        self.providers = cuda_providers(cuda_options, tensorrt_options)
        super().__init__(proto, self.providers)
        onnxfile.require_providers(self.session, self.providers)
        self.proto = proto

    @cached_property
    def note(self) -> str:
        """Where the nodes ran, from a profiling session of its own: made once, when first read (bench reads it
        for each CUDA result it reports; optimize's timing never does)."""
        return placement_note(node_placement(self.proto, self.providers))

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, dtype=self.input_dtype), "cuda", 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, "cuda")

        def call():
            self.session.run_with_iobinding(binding)
            return binding

        call.keep_alive = value  # the binding points into this buffer
        return call

    def fetch(self, output) -> np.ndarray:
        return np.asarray(output.copy_outputs_to_cpu()[0], dtype=np.float32)


class OrtCudaGraphSession:
    """onnxruntime's own CUDA graph (``enable_cuda_graph``): replayed with no per-node launch.

    A captured graph reads and writes fixed device addresses, so each batch size gets its own session
    with its input and output bound once; a new batch is copied into that input in place.
    """

    def __init__(self, proto, cuda_options: dict | None = None) -> None:
        self.proto, self.cuda_options = proto, {**(cuda_options or {}), "enable_cuda_graph": "1"}
        self._per_shape: dict[tuple, tuple] = {}
        self.providers = cuda_providers(cuda_options)
        self.artifact_bytes = proto.ByteSize()  # the .onnx file a deployment would ship

    note = OrtIoBindingSession.note

    def _bound(self, shape: tuple):
        import onnxruntime as ort

        ort_session = OrtIoBindingSession(self.proto, self.cuda_options)  # its providers, checked enabled
        session = ort_session.session
        value = ort.OrtValue.ortvalue_from_shape_and_type(shape, ort_session.input_dtype, "cuda", 0)
        logits = session.get_outputs()[0]
        out_shape = [shape[0] if not isinstance(d, int) else d for d in logits.shape]
        out_dtype = np.float16 if logits.type == "tensor(float16)" else np.float32
        output = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, out_dtype, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(ort_session.input_name, value)
        binding.bind_ortvalue_output(ort_session.output_name, output)
        return ort_session, value, output, binding

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        if x.shape not in self._per_shape:
            self._per_shape[x.shape] = self._bound(x.shape)
        ort_session, value, _, binding = self._per_shape[x.shape]
        value.update_inplace(np.ascontiguousarray(x, dtype=ort_session.input_dtype))

        def call():
            ort_session.session.run_with_iobinding(binding)
            return binding

        return call

    fetch = OrtIoBindingSession.fetch

    def close(self) -> None:
        self._per_shape.clear()
