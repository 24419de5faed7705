"""The one way tmdeploy opens an ONNX file: parsed, checked, and as an onnxruntime session.

``info``, ``check``, ``runtime.load``, ``serve`` and Triton repositories all go through :func:`load` and
:func:`session`, so a file that any of them refuses is refused by all of them with the same one-line
message, and no onnxruntime or protobuf exception reaches the user as an internal error. Tensor data kept
outside the file is never read by :func:`load` (``info`` stays small on a model pointing at huge data),
and data paths that leave the model's directory are refused before anything follows them.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from tmdeploy.errors import TmdeployError, first_line
from tmdeploy.sanitize import clean

CPU = ("CPUExecutionProvider",)
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# onnxruntime's CUDA convolutions default to TF32 (10-bit mantissa), which moved FP32 logits by up to 2.4e-3 on
# an H100: FP32 parity, and an FP32 deployment that keeps it, means FP32 arithmetic
CUDA_FP32 = {"use_tf32": "0"}


def providers(device: str, cuda_options: dict | None = None, tensorrt_options: dict | None = None) -> list:
    """onnxruntime's providers for ``device``: on CUDA, with the CPU as fallback for nodes CUDA lacks, and
    with ``tensorrt_options``, TensorRT's provider first (CUDA runs what TensorRT does not take).

    TmdeployError when this onnxruntime has no CUDA (or TensorRT) provider, naming the install step.
    """
    if device == "cpu":
        return list(CPU)
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA not in available:
        from tmdeploy.optional import install_hint

        raise TmdeployError(f"this onnxruntime has no {CUDA}: {install_hint('onnxruntime-gpu')}")
    if tensorrt_options is not None and TENSORRT not in available:
        raise TmdeployError(f"this onnxruntime has no {TENSORRT}")
    preload_gpu_libraries()
    tensorrt = [] if tensorrt_options is None else [(TENSORRT, tensorrt_options)]
    return [*tensorrt, (CUDA, cuda_options or {}), *CPU]


def preload_gpu_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels torch uses (onnxruntime >= 1.21) before a GPU session:
    without it onnxruntime-gpu finds them only on the system's library path, and drops CUDA when they are not."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


_WHY_NOT_ENABLED = {TENSORRT: "TensorRT's libnvinfer is not found",
                    CUDA: "a CUDA or cuDNN library is missing: python -c 'import onnxruntime; "
                          "onnxruntime.preload_dlls()' names it"}


def require_providers(sess, providers, where: str = ""):
    """``sess``, once sure it runs every one of ``providers`` (names or (name, options) pairs, as the session
    was asked for them): onnxruntime drops one it cannot enable with only a log line and runs on the rest."""
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    dropped = [name for name in names if name not in sess.get_providers()]
    if dropped:
        why = _WHY_NOT_ENABLED.get(dropped[0], "see its log above")
        raise TmdeployError(f"onnxruntime could not enable {', '.join(dropped)}{where} ({why})")
    return sess


def load(path) -> onnx.ModelProto:
    """Parse an ONNX file without its external tensor data; TmdeployError for anything malformed or unsafe."""
    path = Path(path)
    if not path.is_file():  # also refuses FIFOs and devices, which reading would block on or never finish
        raise TmdeployError(f"ONNX file not found: {path}" if not path.exists() else f"not a regular file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and others for non-ONNX bytes
        raise TmdeployError(f"{path} is not a valid ONNX file (truncated or another format): {type(err).__name__}") from err
    if not model.graph.node and not model.graph.input:
        raise TmdeployError(f"{path} is not a valid ONNX file: it holds no graph")
    field = _non_utf8_string(model)
    if field is not None:
        raise TmdeployError(f"{path} is not a valid ONNX file: its {field} is not UTF-8 text (corrupt file?)")
    if not model.graph.output:
        raise TmdeployError(f"{path} is not a usable ONNX model: its graph has no outputs")
    _check_unique_metadata(model, path)
    _check_external_data(model, path)
    return model


def session(path, providers=CPU, provider_options=None, fuse: bool = True):
    """An onnxruntime InferenceSession for ``path`` (checked by :func:`load` first); its failures are ours.

    ``fuse=False``: no graph optimizations, so QDQ pairs run as float QuantizeLinear/DequantizeLinear ops
    instead of being fused into onnxruntime's integer kernels."""
    import onnxruntime as ort

    load(path)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a kernel's failure reaches the user as our one line, not also as its log
    if not fuse:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers), provider_options=provider_options)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented/... types
        raise TmdeployError(f"onnxruntime cannot load {path}: {first_line(err) or type(err).__name__}") from err


def _check_unique_metadata(model: onnx.ModelProto, path: Path) -> None:
    """Each metadata key once (onnx's checker requires it): which of two values a reader takes is its own
    choice, so a file naming ``class_names`` twice would show one set of labels in ``info`` and serve another."""
    seen = set()
    for prop in model.metadata_props:
        if prop.key in seen:
            raise TmdeployError(f"{path}: metadata key '{clean(prop.key)[:100]}' appears more than once; which value "
                                f"holds would depend on the reader: refusing the file")
        seen.add(prop.key)


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Every external data location must name a regular file inside the model's directory."""
    base = path.parent.resolve()
    for tensor in _tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (base / location).resolve() if location else base
        if not location or Path(location).is_absolute() or not target.is_relative_to(base):
            raise TmdeployError(f"{path}: tensor '{tensor.name[:100]}' keeps its data at '{location[:200]}', outside "
                                f"the model's directory; refusing to read it")
        if not target.is_file():
            raise TmdeployError(f"{path}: tensor '{tensor.name[:100]}' keeps its data in '{location[:200]}', "
                                f"which is missing or not a regular file")


def _tensors(model: onnx.ModelProto):
    """Initializers and tensor attributes of every graph and subgraph (what external data can belong to)."""
    graphs = [model.graph, *(f for f in model.functions)]
    while graphs:
        graph = graphs.pop()
        yield from getattr(graph, "initializer", ())
        for sparse in getattr(graph, "sparse_initializer", ()):
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                if attr.HasField("sparse_tensor"):
                    yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
                yield from attr.tensors
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def _non_utf8_string(message) -> str | None:
    """The name of the first string field that is not valid UTF-8, or None.

    ONNX's .proto is proto2, so protobuf parses such fields without complaint and hands them back as
    ``bytes``, which every reader of names, op types and metadata would trip over.
    """
    from google.protobuf.message import Message

    stack = [message]
    while stack:
        current = stack.pop()
        for descriptor, value in current.ListFields():
            if descriptor.type == descriptor.TYPE_STRING:
                if any(not isinstance(v, str) for v in ([value] if isinstance(value, (str, bytes)) else value)):
                    return f"{current.DESCRIPTOR.name}.{descriptor.name}"
            elif descriptor.type == descriptor.TYPE_MESSAGE:
                stack.extend([value] if isinstance(value, Message) else value)
    return None
