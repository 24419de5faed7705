"""Polygraphy runners for the two sides of a parity check: PyTorch, and onnxruntime or a timed session running
the ONNX file (other runtimes' runners are their entries', tmdeploy.runtimes)."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.common import TensorMetadata
from polygraphy import constants

from tmdeploy import onnxfile


class TorchRunner(BaseRunner):
    """Runs a PyTorch module on the CPU (or the module's device) inside polygraphy's Comparator.

    Written here because polygraphy's own PytRunner moves inputs to CUDA unconditionally and expects
    a tuple of outputs; this one runs where the model lives and names single or tuple outputs.
    """

    def __init__(self, module: torch.nn.Module, input_metadata: TensorMetadata, output_names, name="pytorch"):
        super().__init__(name=name, prefix="pytorch-runner")
        self.module, self.input_metadata, self.output_names = module, input_metadata, list(output_names)

    def activate_impl(self):
        self.module.eval()
        self.device = next(self.module.parameters()).device

    def get_input_metadata_impl(self):
        return self.input_metadata

    def infer_impl(self, feed_dict):
        inputs = [torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for v in feed_dict.values()]
        with torch.no_grad():
            start = time.perf_counter()
            outputs = self.module(*inputs)
            self.inference_time = time.perf_counter() - start
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return OrderedDict((n, o.detach().cpu().numpy()) for n, o in zip(self.output_names, outputs))

    def deactivate_impl(self):
        pass


def onnxrt_runner(onnx_path, mark_all: bool = False, name="onnxruntime", device: str = "cpu",
                  cuda_options: dict | None = None, fuse: bool = True) -> OnnxrtRunner:
    """polygraphy's onnxruntime runner on ``device``; ``mark_all`` also returns every intermediate tensor.

    On CUDA in FP32 arithmetic (``onnxfile.CUDA_FP32``), with ``cuda_options`` on top (a candidate's layout).
    ``fuse=False``: without onnxruntime's graph optimizations (:func:`tmdeploy.onnxfile.session`)."""
    providers = onnxfile.providers(device, {**onnxfile.CUDA_FP32, **(cuda_options or {})} if device == "cuda" else None)
    if not mark_all:  # the session through tmdeploy's loader: a file it refuses is one clear error
        sess = onnxfile.session(onnx_path, providers, fuse=fuse)
        return OnnxrtRunner(onnxfile.require_providers(sess, providers), name=name)
    onnxfile.load(onnx_path)
    source = BytesFromOnnx(ModifyOutputs(OnnxFromPath(str(onnx_path)), outputs=constants.MARK_ALL))
    return OnnxrtRunner(SessionFromOnnx(source, providers=providers), name=name)


class SessionRunner(BaseRunner):
    """Runs a session that ``tmdeploy bench`` times (``bind``/``fetch``: a TensorRT engine, onnxruntime's
    TensorRT provider) inside polygraphy's Comparator, so the parity check judges exactly what is timed."""

    def __init__(self, session, input_metadata: TensorMetadata, output_name: str, name="session"):
        super().__init__(name=name, prefix="session-runner")
        self.session, self.input_metadata, self.output_name = session, input_metadata, output_name

    def activate_impl(self):
        pass

    def get_input_metadata_impl(self):
        return self.input_metadata

    def infer_impl(self, feed_dict):
        (x,) = feed_dict.values()
        call = self.session.bind(np.ascontiguousarray(x))
        start = time.perf_counter()
        output = call()
        self.inference_time = time.perf_counter() - start
        return OrderedDict([(self.output_name, self.session.fetch(output))])

    def deactivate_impl(self):
        pass
