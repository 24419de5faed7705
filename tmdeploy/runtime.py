"""Run an exported model: ``load(path)`` gives a Predictor over onnxruntime (``.onnx``) or TensorRT (``.plan``).

What the Predictor takes (always a batch, rank 4; for one image pass ``images[None]``):

- ``predict(images)`` takes what the graph takes: normalized float N×C×H×W (metadata preprocess "none",
  any float dtype, cast to float32) or uint8 N×H×W×C pixels (preprocess "baked").
- ``predict(images, raw=True)`` and ``classify(images)`` take raw images of either kind: uint8 N×H×W×C
  pixels in 0..255, or float N×C×H×W in [0, 1]. They apply the metadata's scaling and mean/std, or only
  convert the layout/dtype for graphs with baked preprocessing.
- Numpy arrays and torch tensors (moved to the CPU) are accepted; torch is never imported here.

Everything is checked before the runtime sees it (rank, shape, channels, dtype, value range of raw floats,
an engine's batch range), each failure one TmdeployError naming what was expected and what came.

Non-finite input (NaN/Inf) raises a TmdeployError naming the rows: a NaN image gives NaN logits and
``classify`` would turn them into an arbitrary label. ``check_finite=False`` skips the check and returns
whatever the model computes (NaN rows stay NaN); the server uses it so that one bad image does not fail
the other requests Triton batched with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tmdeploy import onnxfile
from tmdeploy.engines.tensorrt import ENGINE_SUFFIXES
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.export import metadata
from tmdeploy.optional import install_hint

log = logging.getLogger(__name__)
PROVIDERS = (onnxfile.TENSORRT, onnxfile.CUDA, *onnxfile.CPU)  # preference order
GPU_PROVIDERS = PROVIDERS[:2]
PROVIDER_ALIASES = {"tensorrt": PROVIDERS[0], "trt": PROVIDERS[0], "cuda": PROVIDERS[1], "cpu": PROVIDERS[2]}


def load(path, providers=None, device: int | None = None) -> "Predictor":
    """A Predictor for an ``.onnx`` file or a TensorRT engine (``.plan``, with its sidecar).

    ``providers`` (onnx only): names or aliases (cpu, cuda, tensorrt), as a list or comma-separated;
    default: TensorRT, CUDA, then CPU, as this onnxruntime build has them. ``device``: GPU ordinal.
    """
    path = Path(path)
    if device is not None and (isinstance(device, bool) or not isinstance(device, int) or device < 0):
        raise UsageError(f"device '{device}': expected a GPU ordinal (0, 1, ...)")
    if path.suffix == ".onnx":
        return _load_onnx(path, providers, device)
    if path.suffix in ENGINE_SUFFIXES:
        if providers is not None:
            raise UsageError("providers apply to .onnx files; a TensorRT engine runs on TensorRT")
        return _load_engine(path, device)
    raise UsageError(f"{path}: expected an .onnx file or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})")


def resolve_providers(requested, available, known) -> list[str]:
    """onnxruntime provider names for ``requested`` (None: the preferred available ones).

    Unknown names are a UsageError; known ones this onnxruntime build lacks are a TmdeployError.
    """
    if requested is None:
        return [p for p in PROVIDERS if p in available]
    items = requested.split(",") if isinstance(requested, str) else list(requested)
    names = list(dict.fromkeys(PROVIDER_ALIASES.get(str(i).strip().lower(), str(i).strip()) for i in items))
    if not names or "" in names:
        raise UsageError(f"providers '{requested}': expected names such as cpu, cuda, tensorrt")
    for name in names:
        if name not in known:
            raise UsageError(f"unknown onnxruntime provider '{name}': use cpu, cuda, tensorrt or a full name "
                             f"such as CUDAExecutionProvider")
        if name not in available:
            raise TmdeployError(f"{name} is not in this onnxruntime build (it has {', '.join(available)}); "
                                f"for GPUs: {install_hint('onnxruntime-gpu')}")
    return names


def _load_onnx(path: Path, providers, device) -> "Predictor":
    import onnxruntime as ort

    meta, assumed = metadata.read_or_assume(path)
    if assumed:
        log.warning("%s", assumed)
    names = resolve_providers(providers, ort.get_available_providers(), ort.get_all_providers())
    if device is not None and not set(names) & set(GPU_PROVIDERS):
        raise TmdeployError(f"device={device} needs a GPU provider, but onnxruntime would run on {', '.join(names)}")
    if set(names) & set(GPU_PROVIDERS):  # as check, bench and optimize do before their CUDA sessions
        onnxfile.preload_gpu_libraries()
    options = [{"device_id": device} if device is not None and n in GPU_PROVIDERS else {} for n in names]
    session = onnxfile.session(path, names, options)
    if providers is not None:  # asked for by name: running without one is an error, not a fallback
        onnxfile.require_providers(session, names, f" for {path}")
    return Predictor(_OrtBackend(session), meta, providers=session.get_providers(), assumed=assumed)


def _load_engine(path: Path, device) -> "Predictor":
    from tmdeploy.engines import tensorrt as trt_engine

    if not path.is_file():
        raise TmdeployError(f"engine file not found: {path}")
    runner, sidecar = trt_engine.open_engine(path, device)
    batch = sidecar["batch"]
    return Predictor(_TrtBackend(runner, sidecar["profile"]["input"]), trt_engine.sidecar_metadata(sidecar),
                     providers=["TensorRT"], batch_range=(batch["min"], batch["max"]))


class _OrtBackend:
    def __init__(self, session) -> None:
        self.session = session
        (graph_input,) = session.get_inputs()
        self.input_name = graph_input.name
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: x})))

    def close(self) -> None:
        pass


class _TrtBackend:
    def __init__(self, runner, input_name: str) -> None:
        self.runner, self.input_name = runner, input_name

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # polygraphy reuses its host buffers across calls: copy before the next call overwrites them
        return {name: np.array(value) for name, value in self.runner.infer({self.input_name: x}).items()}

    def close(self) -> None:
        self.runner.deactivate()


class Predictor:
    """A loaded model with its metadata; see the module docstring for what it accepts."""

    def __init__(self, backend, meta: metadata.ModelMetadata, *, providers, batch_range: tuple[int, int] | None = None,
                 assumed: str | None = None) -> None:
        self._backend = backend
        self.metadata = meta
        self.assumed = assumed  # for a file without tmdeploy metadata: what was read off its graph
        # a plain file names its outputs as its exporter did: its first output holds the logits
        self.logits_name = "logits" if "logits" in meta.outputs else meta.outputs[0]
        self.providers = list(providers)
        self.batch_range = batch_range  # (min, max) of a TensorRT engine's profile; None: any batch

    def prepare(self, images, *, raw: bool = False, check_finite: bool = True) -> np.ndarray:
        """The array the graph gets for ``images``: checked, and preprocessed when ``raw``."""
        x = self.metadata.graph_input(images, raw=raw, check_finite=check_finite)
        if self.batch_range and not self.batch_range[0] <= len(x) <= self.batch_range[1]:
            lo, hi = self.batch_range
            raise TmdeployError(f"batch of {len(x)} images is outside the engine's profile {lo}..{hi}: "
                                f"split it, or rebuild the engine with a larger batch range")
        return x

    def run(self, images, *, raw: bool = False, check_finite: bool = True) -> dict[str, np.ndarray]:
        """Every output of the graph (``logits`` and, if exported, ``patch_logits``) by name."""
        return self._backend.run(self.prepare(images, raw=raw, check_finite=check_finite))

    def predict(self, images, *, raw: bool = False, check_finite: bool = True) -> np.ndarray:
        """Logits, N × classes."""
        return self.run(images, raw=raw, check_finite=check_finite)[self.logits_name]

    def classify(self, images, *, check_finite: bool = True) -> list[str]:
        """Class names of raw images (uint8 N×H×W×C pixels or float N×C×H×W in [0, 1])."""
        logits = self.predict(images, raw=True, check_finite=check_finite)
        return [self.metadata.class_names[i] for i in np.argmax(logits, axis=1)]

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *_) -> None:
        self.close()
