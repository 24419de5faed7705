"""The CUDA-only parts of the benchmark: event timing, PyTorch CUDA graphs, onnxruntime IO binding.

Kept apart because no CI machine here has a GPU: this file runs only on ``--device cuda``
(benchmarks/GPU.md gives the procedure on a lent H100/H200).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from tmdeploy.bench.sessions import OrtSession, Skip, TorchSession
from tmdeploy.errors import TmdeployError
from tmdeploy.optional import install_hint


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


def cuda_providers() -> list[str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"this onnxruntime has no CUDAExecutionProvider: {install_hint('onnxruntime-gpu')}")
    if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21: CUDA/cuDNN from the nvidia-* wheels torch uses
        ort.preload_dlls()
    return ["CUDAExecutionProvider"]


class OrtIoBindingSession(OrtSession):
    """onnxruntime on CUDA with IO binding: the input lives on the GPU and the output stays there."""

    def __init__(self, proto, providers: list[str]) -> None:
        super().__init__(proto, providers)
        if "CUDAExecutionProvider" not in self.session.get_providers():  # it falls back to the CPU silently
            raise TmdeployError("onnxruntime could not enable CUDAExecutionProvider (see its log above)")

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
