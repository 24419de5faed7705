"""ONNX → TensorRT engine through polygraphy's loaders, with a JSON sidecar that makes the engine reusable.

Our TensorRT code is thin on purpose: polygraphy (maintained and tested by NVIDIA) parses, builds and runs.
Everything decided before TensorRT runs is plain Python and tested without a GPU:

- the precision plan: TensorRT ≥ 11 builds strongly typed networks (precision is what the ONNX graph says:
  FP16 casts, INT8 Q/DQ pairs); TensorRT 10 gets the ``fp16``/``int8`` builder flags from the metadata;
- the cache key (a hash of everything that changes the engine) and the sidecar ``<engine>.json``;
- the check that an engine was built by this machine's TensorRT for this machine's GPU;
- the check, over the engine inspector's layer JSON, that the asked precision is really used.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from tmdeploy import __version__
from tmdeploy.engines.profiles import BatchProfile, parse_batch, profile_shapes
from tmdeploy.engines.sidecar import (SIDECAR_FORMAT, read_sidecar, sidecar_metadata, sidecar_path,  # noqa: F401
                                      write_sidecar)
from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.export import metadata
from tmdeploy.fileio import atomic_write, check_output, file_sha256
from tmdeploy.optional import require

INPUT_NAME = "images"
ENGINE_SUFFIXES = (".plan", ".engine")  # what runtime.load, serve and Triton repositories take as an engine
MIN_TENSORRT_MAJOR = 10
STRONGLY_TYPED_MAJOR = 11  # TensorRT 11 dropped the FP16/INT8 builder flags: precision lives in the graph

# Lower-precision dtypes, lowest first; a layer "runs in" the lowest one among its tensors.
_REDUCED = ("FP4", "INT4", "FP8", "INT8", "FP16", "BF16")
# Substrings of the inspector's "Format/Datatype" (TensorRT 10) or "Datatype" (TensorRT 11) text, in match order.
_DTYPE_TOKENS = (
    ("UINT8", "UINT8"), ("BFLOAT16", "BF16"), ("BF16", "BF16"), ("FLOAT8", "FP8"), ("FP8", "FP8"),
    ("FLOAT4", "FP4"), ("FP4", "FP4"), ("INT4", "INT4"), ("HALF", "FP16"), ("FLOAT16", "FP16"),
    ("FP16", "FP16"), ("INT8", "INT8"), ("INT32", "INT32"), ("INT64", "INT64"), ("BOOL", "BOOL"),
    ("FP32", "FP32"), ("FLOAT", "FP32"),
)
# Layer types doing the arithmetic that precision is about (Cask* kernels, Myelin "gemm"/"correlation").
_COMPUTE_TYPE_WORDS = ("conv", "gemm", "matrixmultiply", "matmul", "fullyconnected", "correlation")


@dataclass(frozen=True)
class Environment:
    """What an engine is tied to: it only runs on the TensorRT version and GPU that built it."""

    tensorrt: str
    gpu: str
    compute_capability: str


@dataclass(frozen=True)
class PrecisionPlan:
    """How the builder is told the precision: a strongly typed network, or TensorRT 10's flags."""

    strongly_typed: bool
    fp16: bool
    int8: bool


@dataclass(frozen=True)
class BuildSpec:
    """Everything that changes the engine; its hash is the cache key."""

    onnx_sha256: str
    input_name: str
    shapes: dict
    precision: str
    plan: PrecisionPlan
    workspace_mib: int | None
    environment: Environment
    tmdeploy_version: str


# ---- plain Python: decided before TensorRT runs -----------------------------------------------------


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError as err:
        raise TmdeployError(f"cannot read the TensorRT version '{version}'") from err


def precision_plan(precision: str, tensorrt_version: str) -> PrecisionPlan:
    """The builder settings for a model of ``precision`` (the metadata's) on TensorRT ``tensorrt_version``."""
    if precision not in ("fp32", "fp16", "int8"):
        raise TmdeployError(f"the ONNX metadata names an unknown precision '{precision}' (fp32, fp16 or int8)")
    major = trt_major(tensorrt_version)
    if major < MIN_TENSORRT_MAJOR:
        raise TmdeployError(
            f"TensorRT {tensorrt_version} is too old: tmdeploy needs TensorRT {MIN_TENSORRT_MAJOR} or newer")
    if major >= STRONGLY_TYPED_MAJOR:
        return PrecisionPlan(strongly_typed=True, fp16=False, int8=False)
    return PrecisionPlan(strongly_typed=False, fp16=precision == "fp16", int8=precision == "int8")


def validate_workspace(workspace_mib) -> None:
    if workspace_mib is not None and (isinstance(workspace_mib, bool) or not isinstance(workspace_mib, int)
                                      or workspace_mib < 1):
        raise UsageError(f"workspace '{workspace_mib}': expected a positive number of MiB")


def build_spec(meta: metadata.ModelMetadata, onnx_sha256: str, batch: BatchProfile, workspace_mib: int | None,
               env: Environment) -> BuildSpec:
    return BuildSpec(
        onnx_sha256=onnx_sha256, input_name=INPUT_NAME, shapes=profile_shapes(meta, batch),
        precision=meta.precision, plan=precision_plan(meta.precision, env.tensorrt), workspace_mib=workspace_mib,
        environment=env, tmdeploy_version=__version__,
    )


def cache_key(spec: BuildSpec) -> str:
    """sha256 of the spec's canonical JSON: equal keys mean the same engine would be built."""
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()


def default_timing_cache(engine_path: Path, env: Environment) -> Path:
    """Beside the engine, one per TensorRT version and GPU generation: timings from another device are useless."""
    return Path(engine_path).parent / f"timing-trt{env.tensorrt}-sm{env.compute_capability.replace('.', '')}.cache"


def make_sidecar(spec: BuildSpec, *, engine_sha256: str, onnx_path: Path, meta: metadata.ModelMetadata,
                 layer_precisions: dict) -> dict:
    """What an engine says about itself: how and where it was built, from what, and the model it holds."""
    shapes = spec.shapes
    return {
        "sidecar_format": SIDECAR_FORMAT,
        "cache_key": cache_key(spec),
        "engine_sha256": engine_sha256,
        "tensorrt": spec.environment.tensorrt,
        "gpu": spec.environment.gpu,
        "compute_capability": spec.environment.compute_capability,
        "precision": spec.precision,
        "profile": {"input": spec.input_name, **shapes},
        "batch": {k: shapes[k][0] for k in ("min", "opt", "max")},
        "onnx_path": str(Path(onnx_path).resolve()),
        "onnx_sha256": spec.onnx_sha256,
        "tmdeploy_version": spec.tmdeploy_version,
        "build_options": {"workspace_mib": spec.workspace_mib, **asdict(spec.plan)},
        "layer_precisions": layer_precisions,
        "metadata": meta.to_props(),
    }


def engine_is_current(engine_path, key: str) -> bool:
    """True when ``engine_path`` and its sidecar exist, the sidecar has ``key``, and the engine is intact."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return False
    try:
        sidecar = read_sidecar(engine_path)
    except TmdeployError:
        return False
    return sidecar.get("cache_key") == key and sidecar.get("engine_sha256") == file_sha256(engine_path)


def check_compatible(sidecar: dict, env: Environment, engine_path="the engine") -> None:
    """Raise when the engine was built for another TensorRT version or GPU: TensorRT plans do not travel."""
    built = Environment(str(sidecar.get("tensorrt")), str(sidecar.get("gpu")), str(sidecar.get("compute_capability")))
    if built == env:
        return
    source = sidecar.get("onnx_path") or "its ONNX file"
    raise TmdeployError(
        f"{engine_path} was built with TensorRT {built.tensorrt} for {built.gpu} (sm {built.compute_capability}), "
        f"but this machine has TensorRT {env.tensorrt} and {env.gpu} (sm {env.compute_capability}): "
        f"rebuild the engine here from {source}"
    )


def tensor_dtype(tensor: dict) -> str | None:
    """The dtype of one inspector tensor entry, from TensorRT 10's "Format/Datatype" or TensorRT 11's "Datatype"."""
    text = tensor.get("Format/Datatype") or " ".join(str(tensor.get(k, "")) for k in ("Datatype", "Format"))
    upper = text.upper()
    return next((dtype for token, dtype in _DTYPE_TOKENS if token in upper), None)


def layer_dtype(layer: dict) -> str | None:
    """The lowest precision among a layer's input and output tensors: what its kernel computes in."""
    dtypes = {tensor_dtype(t) for key in ("Inputs", "Outputs") for t in layer.get(key) or []} - {None}
    reduced = [d for d in _REDUCED if d in dtypes]
    return reduced[0] if reduced else ("FP32" if "FP32" in dtypes else None)


def is_compute_layer(layer: dict) -> bool:
    kind = str(layer.get("LayerType", "")).lower()
    return any(word in kind for word in _COMPUTE_TYPE_WORDS)


def check_layer_precisions(engine_info, precision: str) -> dict:
    """Check the engine inspector's JSON (``get_engine_information``) against the model's precision.

    fp16: no convolution/matmul layer may run in FP32 (FP16 must never silently become FP32).
    int8: at least one such layer runs in INT8 (a Q/DQ graph may leave some layers unquantized).
    Returns the count of compute layers per dtype, for the sidecar. Raises TmdeployError otherwise.
    """
    info = json.loads(engine_info) if isinstance(engine_info, (str, bytes)) else engine_info
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        if precision == "fp32":
            return {}
        raise TmdeployError("the engine has no detailed layer information: build with profiling verbosity DETAILED")
    compute = [layer for layer in layers if is_compute_layer(layer)]
    counts: dict[str, int] = {}
    for layer in compute:
        dtype = layer_dtype(layer) or "unknown"
        counts[dtype] = counts.get(dtype, 0) + 1
    if precision == "fp32":
        return counts
    scope = compute or layers  # no recognizable compute layer: the asked precision must appear somewhere
    wanted = ("FP16", "BF16", "FP8", "INT8", "INT4", "FP4") if precision == "fp16" else ("INT8",)
    used = [layer for layer in scope if layer_dtype(layer) in wanted]
    fp32 = [layer for layer in compute if layer_dtype(layer) == "FP32"]
    if not used or (precision == "fp16" and fp32):
        names = ", ".join(str(layer.get("Name", "?")) for layer in fp32[:5]) or "none found"
        raise TmdeployError(
            f"TensorRT did not build the {precision} model in {precision}: {len(used)} of {len(scope)} layers use it "
            f"(FP32 compute layers: {names}); the engine was not written"
        )
    return counts


# ---- thin TensorRT part (runs only where TensorRT and a GPU are) ------------------------------------


def import_tensorrt():
    """The tensorrt module, or one TmdeployError naming the install step."""
    return require("tensorrt", "tensorrt", "TensorRT")


def current_environment(tensorrt_version: str, device: int | None = None) -> Environment:
    """This machine's TensorRT version and the GPU CUDA would use (nvidia-smi numbering, CUDA_VISIBLE_DEVICES aware)."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    index = device or 0
    gpu_id = visible[index] if index < len(visible) else str(index)
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={gpu_id}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
        name, capability = (part.strip() for part in out.splitlines()[0].rsplit(",", 1))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        raise TmdeployError(f"cannot identify GPU {gpu_id} with nvidia-smi ({type(err).__name__}): "
                            f"is an NVIDIA driver installed?") from err
    return Environment(tensorrt_version, name, capability)


UNSIGNED_INT8 = ("is quantized for onnxruntime (unsigned 8-bit activations: --int8-target onnxruntime); TensorRT "
                 "takes symmetric signed INT8 only: export it with --int8-target tensorrt")


def check_signed_int8(model, onnx_path: Path) -> None:
    """Refuse a QDQ graph (``onnx_path``'s ``model``) with unsigned 8-bit zero points before TensorRT is loaded:
    its parser rejects them deep in the build (and onnxruntime's recipe also rewrites float ops for
    onnxruntime's own layout)."""
    import onnx

    zero_points = {n.input[2] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    if any(t.name in zero_points and t.data_type == onnx.TensorProto.UINT8 for t in model.graph.initializer):
        raise UsageError(f"{onnx_path} {UNSIGNED_INT8}")


def build_engine(onnx_path, engine_path=None, *, batch: BatchProfile | str, workspace_mib: int | None = None,
                 timing_cache=None, force: bool = False) -> Path:
    """Build (or reuse) the TensorRT engine for ``onnx_path``; default path: the ONNX path with ``.plan``.

    The engine is reused when its sidecar's cache key matches and the file is intact, unless ``force``.
    """
    onnx_path = Path(onnx_path)
    model, meta = metadata.read_model(onnx_path)  # the file read once: the checks below look at its graph too
    engine_path = check_output(engine_path if engine_path is not None else onnx_path.with_suffix(".plan"), onnx_path)
    batch = parse_batch(batch) if isinstance(batch, str) else batch
    validate_workspace(workspace_mib)
    check_signed_int8(model, onnx_path)
    del model
    trt = import_tensorrt()
    env = current_environment(trt.__version__)
    spec = build_spec(meta, file_sha256(onnx_path), batch, workspace_mib, env)
    if not force and engine_is_current(engine_path, cache_key(spec)):
        return engine_path
    timing_cache = Path(timing_cache) if timing_cache is not None else default_timing_cache(engine_path, env)
    engine_bytes = bytes(_build(trt, onnx_path, spec, timing_cache))
    counts = check_layer_precisions(_engine_information(trt, engine_bytes), spec.precision)
    atomic_write(engine_path, lambda tmp: tmp.write_bytes(engine_bytes), onnx_path)
    sidecar = make_sidecar(spec, engine_sha256=file_sha256(engine_path), onnx_path=onnx_path, meta=meta,
                           layer_precisions=counts)
    write_sidecar(engine_path, sidecar)
    return engine_path


def _build(trt, onnx_path: Path, spec: BuildSpec, timing_cache: Path):
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    shapes = spec.shapes
    profile = Profile().add(spec.input_name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    limits = {trt.MemoryPoolType.WORKSPACE: spec.workspace_mib << 20} if spec.workspace_mib else None
    config = CreateConfig(
        fp16=spec.plan.fp16, int8=spec.plan.int8, profiles=[profile], memory_pool_limits=limits,
        load_timing_cache=str(timing_cache), profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
    )
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=spec.plan.strongly_typed)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        return EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))()
    except PolygraphyException as err:
        raise TmdeployError(f"TensorRT could not build {onnx_path}: {first_line(err)}") from err


def _engine_information(trt, engine_bytes: bytes) -> str:
    from polygraphy.backend.trt import EngineFromBytes

    engine = EngineFromBytes(engine_bytes)()
    return engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)


def open_engine(engine_path, device: int | None = None):
    """Check the engine against this machine and return ``(activated TrtRunner, sidecar)``."""
    engine_path = Path(engine_path)
    trt = import_tensorrt()
    sidecar = read_sidecar(engine_path)
    check_compatible(sidecar, current_environment(trt.__version__, device), engine_path)
    from polygraphy import cuda
    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    if device is not None:
        cuda.wrapper().check(cuda.wrapper().handle.cudaSetDevice(int(device)))
    runner = TrtRunner(EngineFromPath(str(engine_path)), optimization_profile=0)
    runner.activate()
    return runner, sidecar
