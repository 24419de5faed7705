"""A Triton Inference Server model repository for an exported model (ONNX Runtime or TensorRT backend).

Layout: ``REPO/NAME/config.pbtxt``, ``REPO/NAME/labels.txt`` and ``REPO/NAME/1/model.onnx`` (or ``model.plan``).
Input/output names, dims (without the batch axis) and types come from the ONNX graph; class names from
the metadata. For a ``.plan`` the graph is the ONNX file its sidecar names (or one given), checked by hash.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import onnx

from tmdeploy import onnxfile
from tmdeploy.engines import tensorrt as trt_engine
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.export import metadata
from tmdeploy.fileio import file_sha256, temp_prefix
from tmdeploy.optional import require
from tmdeploy.values import MAX_BATCH, MAX_SECONDS

PLATFORMS = {".onnx": "onnxruntime_onnx", **{suffix: "tensorrt_plan" for suffix in trt_engine.ENGINE_SUFFIXES}}
FILE_NAMES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}  # Triton's default_model_filename
DEFAULT_MAX_BATCH = 256
MAX_QUEUE_DELAY_US = int(MAX_SECONDS * 1e6)  # a day; Triton's config holds larger numbers, but fails on them
LABELS_FILE = "labels.txt"
# ONNX element type → (numpy dtype name, Triton data type): the types tmdeploy graphs take and give.
_TYPES = {onnx.TensorProto.FLOAT: ("float32", "TYPE_FP32"), onnx.TensorProto.UINT8: ("uint8", "TYPE_UINT8")}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name
    triton_type: str
    dims: tuple[int, ...]  # without the batch axis; -1 where the graph leaves it open


@dataclass(frozen=True)
class ModelSignature:
    """What a server needs to know about a model file: its tensors, its metadata, its batch range."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: metadata.ModelMetadata
    batch_range: tuple[int, int] | None  # a TensorRT engine's optimization profile; None: any batch


def graph_signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs; TmdeployError if a type is not one Triton gets from us or the batch is fixed."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_tensor_spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_tensor_spec(v) for v in model.graph.output]


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in _TYPES:
        name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise TmdeployError(f"tensor '{value.name}' has type {name}; tmdeploy serves float32 and uint8 tensors")
    if not tensor_type.HasField("shape") or not tensor_type.shape.dim:
        raise TmdeployError(f"tensor '{value.name}' has no shape in the ONNX graph")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    if dims[0] != -1:
        raise TmdeployError(f"tensor '{value.name}' has a fixed batch size {dims[0]}: "
                            f"Triton batching needs a dynamic batch axis")
    dtype, triton_type = _TYPES[tensor_type.elem_type]
    return TensorSpec(value.name, dtype, triton_type, tuple(dims[1:]))


def model_signature(model_path, onnx_path=None) -> ModelSignature:
    """The signature of an ``.onnx`` file, or of a ``.plan`` through the ONNX file it was built from."""
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        source, meta, batch_range = model_path, metadata.read_or_assume(model_path)[0], None
    elif model_path.suffix in trt_engine.ENGINE_SUFFIXES:
        source, meta, batch_range = _engine_source(model_path, onnx_path)
    else:
        raise UsageError(f"{model_path}: expected an .onnx file or a TensorRT engine "
                         f"({', '.join(trt_engine.ENGINE_SUFFIXES)})")
    inputs, outputs = graph_signature(onnxfile.load(source))
    return ModelSignature(inputs, outputs, meta, batch_range)


def _engine_source(engine_path: Path, onnx_path):
    if not engine_path.is_file():
        raise TmdeployError(f"engine file not found: {engine_path}")
    sidecar = trt_engine.read_sidecar(engine_path)
    source = Path(onnx_path if onnx_path is not None else sidecar["onnx_path"])
    if not source.is_file():
        raise TmdeployError(f"{engine_path} was built from {source}, which is gone: pass the ONNX file (onnx_path)")
    if file_sha256(source) != sidecar["onnx_sha256"]:
        raise TmdeployError(f"{source} is not the ONNX file {engine_path} was built from (its sha256 differs)")
    batch = sidecar["batch"]
    return source, trt_engine.sidecar_metadata(sidecar), (batch["min"], batch["max"])


def model_name(model_path, name=None) -> str:
    """Triton model names are directory names: letters, digits, '.', '_' and '-', not starting with '.'."""
    if name is None:
        return re.sub(r"[^A-Za-z0-9._-]", "_", Path(model_path).stem).lstrip(".") or "model"
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name):
        raise UsageError(f"model name '{name}': use letters, digits, '.', '_' and '-' (not starting with '.')")
    return name


def check_batching(max_batch_size: int, preferred_batch_sizes, max_queue_delay_us: int, instance_count: int,
                   batch_range: tuple[int, int] | None) -> None:
    def positive(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive(max_batch_size) or max_batch_size > MAX_BATCH:
        raise UsageError(f"max_batch_size {max_batch_size!r}: expected an integer in 1..{MAX_BATCH}, the exported "
                         f"graphs' batch limit")
    if batch_range is not None and max_batch_size > batch_range[1]:
        raise UsageError(f"max_batch_size {max_batch_size} exceeds the engine's profile maximum {batch_range[1]}")
    if batch_range is not None and batch_range[0] != 1:
        raise TmdeployError(f"the engine's profile starts at batch {batch_range[0]}, but Triton sends batches "
                            f"from 1: rebuild it with MIN=1")
    for size in preferred_batch_sizes or ():
        if not positive(size) or size > max_batch_size:
            raise UsageError(f"preferred batch size {size!r}: expected an integer in 1..{max_batch_size}")
    if not isinstance(max_queue_delay_us, int) or not 0 <= max_queue_delay_us <= MAX_QUEUE_DELAY_US:
        raise UsageError(f"max_queue_delay_us {max_queue_delay_us!r}: expected an integer in 0..{MAX_QUEUE_DELAY_US}")
    if not positive(instance_count):
        raise UsageError(f"instance_count {instance_count!r}: expected a positive integer")


def config_pbtxt(name: str, platform: str, sig: ModelSignature, *, max_batch_size: int, preferred_batch_sizes,
                 max_queue_delay_us: int, instance_count: int) -> str:
    """Triton's model configuration in protobuf text format, built with Triton's own ``ModelConfig`` message.

    It is proto3: fields at their zero value are not written, and Triton reads them back as zero (so a
    ``max_batch_size`` of 0, Triton's "no batching", needs no line). ``dynamic_batching`` is marked present
    even when all its fields are zero, since its presence is what turns the batcher on.
    """
    pb = require("tritonclient.grpc.model_config_pb2", "tritonclient", "tritonclient")
    from google.protobuf import text_format

    config = pb.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    for spec in sig.inputs:
        config.input.add(name=spec.name, data_type=pb.DataType.Value(spec.triton_type), dims=spec.dims)
    for spec in sig.outputs:
        config.output.add(name=spec.name, data_type=pb.DataType.Value(spec.triton_type), dims=spec.dims,
                          label_filename=LABELS_FILE if spec.name == "logits" else "")
    config.dynamic_batching.SetInParent()
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes or ())
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    kind = pb.ModelInstanceGroup.KIND_GPU if platform == "tensorrt_plan" else pb.ModelInstanceGroup.KIND_AUTO
    config.instance_group.add(count=instance_count, kind=kind)
    return text_format.MessageToString(config)


def labels_text(meta: metadata.ModelMetadata) -> str:
    if any("\n" in name or "\r" in name for name in meta.class_names):
        raise TmdeployError("a class name contains a line break: it cannot go into Triton's labels file")
    return "".join(f"{name}\n" for name in meta.class_names)


def write_model_repository(model_path, repo_dir, name=None, max_batch_size: int | None = None,
                           preferred_batch_sizes=None, max_queue_delay_us: int = 100, instance_count: int = 1,
                           onnx_path=None) -> Path:
    """Write version 1 of ``repo_dir/NAME`` for ``model_path`` (.onnx or .plan) and return ``repo_dir/NAME``.

    ``max_batch_size`` defaults to 256, or to the profile maximum of a ``.plan``. Only ``config.pbtxt``,
    ``labels.txt`` and ``1/model.onnx`` (or ``1/model.plan``) are replaced: the model's other versions and
    files stay. The change is all or nothing: see :func:`_write_dir`.
    """
    model_path, repo_dir = Path(model_path), Path(repo_dir)
    sig = model_signature(model_path, onnx_path)
    if max_batch_size is None:
        max_batch_size = sig.batch_range[1] if sig.batch_range else DEFAULT_MAX_BATCH
    check_batching(max_batch_size, preferred_batch_sizes, max_queue_delay_us, instance_count, sig.batch_range)
    name = model_name(model_path, name)
    platform = PLATFORMS[model_path.suffix]
    config = config_pbtxt(
        name, platform, sig, max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
        instance_count=instance_count,
    )
    labels = labels_text(sig.metadata)
    writers = (lambda path: shutil.copyfile(model_path, path), lambda path: path.write_text(config),
               lambda path: path.write_text(labels))
    return _write_dir(repo_dir / name, dict(zip(model_files(platform), writers)))


def model_files(platform: str) -> tuple[str, ...]:
    """The paths, inside ``REPO/NAME``, that tmdeploy writes for a model served on ``platform``."""
    return f"1/{FILE_NAMES[platform]}", "config.pbtxt", LABELS_FILE


def check_model_dir(final, names) -> Path:
    """Refuse, before anything is written, a ``REPO/NAME`` where something is in the way of ``names``:
    NAME or a folder on the way that is not a directory (or is a link), a file name taken by anything but
    a regular file or a link."""
    final = Path(final)
    for name in names:
        parts = Path(name).parts
        folders = [final.joinpath(*parts[:i]) for i in range(len(parts))]
        for path, folder in [*((f, True) for f in folders), (final / name, False)]:
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                break
            except OSError as err:
                raise TmdeployError(f"cannot write {path}: {err.strerror or err}") from err
            if folder and not stat.S_ISDIR(mode):
                raise UsageError(f"{path} is in the way: it is not a directory; refusing to replace it")
            if not folder and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise UsageError(f"{path} is in the way: it is not a regular file; refusing to replace it")
    return final


def _write_dir(final: Path, files: dict) -> Path:
    """Stage ``final`` beside it, then swap it in: an interrupt leaves the old directory or the new one.

    The stage holds the old directory's other entries (hard links, or copies where the file system will
    not link) and ``files`` ({relative path: write(path)}) written fresh; the old directory is removed after.
    """
    check_model_dir(final, files)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        prefix = temp_prefix(final.name, final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
    except OSError as err:
        raise TmdeployError(f"cannot write {final}: {err.strerror or err}") from err
    old = final.with_name(f"{prefix}{uuid.uuid4().hex[:8]}.old")  # as long as the temporary name: fits NAME_MAX
    try:
        mode = 0o755  # mkdtemp makes 0700 directories; the server may run as another user
        if final.exists():
            mode = stat.S_IMODE(final.stat().st_mode)
            ours = {final / name for name in files}
            shutil.copytree(final, tmp, symlinks=True, dirs_exist_ok=True, copy_function=_link_or_copy,
                            ignore=lambda d, entries: [e for e in entries if Path(d, e) in ours])
        for name, write in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            write(tmp / name)
        os.chmod(tmp, mode)
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once swapped in
        if old.exists() and not final.exists():
            os.rename(old, final)
        if isinstance(err, OSError):
            raise TmdeployError(f"cannot write {final}: {err.strerror or err}") from err
        raise
    finally:  # also when a signal comes after the swap, or during this (a second signal is ignored)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
    return final


def _link_or_copy(src, dst) -> None:
    """The user's files, kept in the staged directory: a hard link costs nothing, a copy where links fail."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)
