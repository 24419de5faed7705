"""What every backend is built into: a Session with one small interface, and Skip for a backend that
cannot run here. Apart from the backends (which build them) and the CUDA sessions (which extend them),
so neither imports the other.

A Session's ``bind(x)`` places a batch where the backend reads it (host array, device tensor, IO binding)
and returns the call to time, so no copy or conversion is timed that a deployed service would not make;
``fetch(output)`` brings that call's logits to the host as float32, for accuracy.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np


class Skip(Exception):
    """This backend cannot run here (no GPU, no TensorRT, ...): a note in the results, not a failure."""


class Session(Protocol):
    def bind(self, x: np.ndarray) -> Callable[[], object]: ...

    def fetch(self, output) -> np.ndarray: ...

    def close(self) -> None: ...


class TorchSession:
    def __init__(self, module, device: str) -> None:
        self.module, self.device = module, device
        tensors = [*module.parameters(), *module.buffers()]
        self.artifact_bytes = sum(t.numel() * t.element_size() for t in tensors)  # what a state_dict would hold

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        import torch

        xt = torch.from_numpy(x).to(self.device)

        def call():
            with torch.inference_mode():
                return self.module(xt)

        return call

    def fetch(self, output) -> np.ndarray:
        return output.float().cpu().numpy()

    def close(self) -> None:
        pass


class OrtSession:
    """An onnxruntime session on the CPU: feeds are host arrays in the graph's input dtype."""

    def __init__(self, proto, providers: list[str], threads: int | None = None, fuse: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # a failed run is reported as our one line, not also as onnxruntime's colored log
        if threads:
            options.intra_op_num_threads = threads
        if not fuse:  # QDQ pairs run op by op in float: TensorRT's exact integer arithmetic, for agreement only
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        blob = proto.SerializeToString()
        self.artifact_bytes = len(blob)  # the .onnx file a deployment would ship
        self.session = ort.InferenceSession(blob, options, providers=providers)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.input_dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        self.output_name = self.session.get_outputs()[0].name

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        feed = {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        return lambda: self.session.run([self.output_name], feed)[0]

    def fetch(self, output) -> np.ndarray:
        return np.asarray(output, dtype=np.float32)

    def close(self) -> None:
        pass
