"""The description an exported ONNX file carries about itself, in ``metadata_props``.

An application that loads the file with onnxruntime alone reads these with
``session.get_modelmeta().custom_metadata_map``: plain string keys, lists and numbers as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
import numpy as np
import onnx

from tmdeploy import onnxfile
from tmdeploy.errors import TmdeployError, first_line
from tmdeploy.sanitize import clean
from tmdeploy.export.options import PRECISIONS
from tmdeploy.values import input_size_problem, normalization_problem, plain_list

METADATA_FORMAT = "1"
_JSON_FIELDS = {"class_names", "input_size", "mean", "std", "outputs", "tm_blocks", "tm_left"}
# (preprocess, layout, input_dtype): normalized float N×C×H×W, or raw uint8 N×H×W×C pixels
_INPUT_FORMS = {("none", "NCHW", "float32"), ("baked", "NHWC", "uint8")}
_RANGE_TOLERANCE = 1e-3  # raw floats this far outside [0, 1] are rounding, further is another scale


@dataclass
class ModelMetadata:
    arch: str
    class_names: list[str]
    input_size: list[int]  # C, H, W of the network itself
    mean: list[float]  # per channel, on the [0, 1] pixel scale
    std: list[float]
    layout: str = "NCHW"  # of the graph input: NCHW (float, normalized) or NHWC (uint8, --bake-preprocess)
    input_dtype: str = "float32"
    preprocess: str = "none"  # "none": feed normalized float NCHW; "baked": feed raw uint8 NHWC pixels
    precision: str = "fp32"
    int8_recipe: str = ""  # INT8 files: the recipe (``tensorrt``, ``onnxruntime``, ``onnxruntime-vnni``, ...)
    int8_safe_on: str = ""  # INT8 files: where the integer arithmetic is exact (tmdeploy.export.int8_saturation)
    tm_form: str = ""  # the export form of the template-matching blocks; "none" when no block was rewritten
    tm_blocks: dict = field(default_factory=dict)  # blocks rewritten, per form: {"normalized": 8}
    tm_left: list = field(default_factory=list)  # soft-max nodes like a TM block's, not recognised: left as exported
    opset: int = 0
    outputs: list[str] = field(default_factory=lambda: ["logits"])
    source_sha256: str = ""
    source_checkpoint: str = ""
    tmdeploy_version: str = ""
    tmdeploy_format: str = METADATA_FORMAT

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One image as the graph takes it: C,H,W for normalized float input, H,W,C for baked uint8 pixels."""
        c, h, w = self.input_size
        return (h, w, c) if self.layout == "NHWC" else (c, h, w)

    def input_format(self) -> tuple:
        """All that :meth:`graph_input` reads, hashable: inputs made for one graph serve every graph of the same
        format, so optimize prepares its calibration images and parity inputs once per format, not per graph."""
        return (tuple(self.input_size), self.layout, self.preprocess, tuple(self.mean), tuple(self.std))

    def graph_input(self, images, *, raw: bool = False, check_finite: bool = True) -> np.ndarray:
        """``images`` as this graph takes them, checked (rank, shape, channels, dtype, finite values).

        The one definition of what the graph takes, used by applications (``runtime``), the parity check
        and calibration alike. ``raw=False``: images already in the graph's form (normalized float32
        N×C×H×W, or uint8 N×H×W×C for baked preprocessing). ``raw=True``: uint8 N×H×W×C pixels or float
        N×C×H×W in [0, 1], scaled and normalized here as the metadata says (or only converted for baked
        graphs). Numpy arrays, torch tensors and nested lists are accepted; each failure is one TmdeployError.
        """
        return (_from_raw if raw else _prepared)(images, self, check_finite)

    def to_props(self) -> dict[str, str]:
        return {k: json.dumps(v) if k in _JSON_FIELDS else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        """Parse metadata_props; raise TmdeployError when they are not tmdeploy's or are malformed."""
        if not isinstance(props, dict):
            raise TmdeployError(f"the tmdeploy metadata is a {type(props).__name__}, not a mapping of strings")
        if props.get("tmdeploy_format") is None:
            raise TmdeployError("the ONNX file has no tmdeploy metadata (was it exported by tmdeploy?)")
        values = {}
        try:
            for f in fields(cls):
                if f.name not in props:
                    continue
                raw = props[f.name]
                if not isinstance(raw, str):
                    raise TypeError(f"{f.name} is a {type(raw).__name__}, not a string")
                values[f.name] = json.loads(raw) if f.name in _JSON_FIELDS else raw
            values["opset"] = int(values.get("opset", 0))
            meta = cls(**values)
        except (TypeError, ValueError, RecursionError) as err:  # RecursionError: JSON nested too deep
            raise TmdeployError(
                f"the ONNX file's tmdeploy metadata is malformed ({type(err).__name__}: {first_line(err, 160)})") from err
        _validate(meta)
        return meta


def _validate(meta: ModelMetadata) -> None:
    if not plain_list(meta.class_names, str) or not meta.class_names:
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: class_names must be a list of strings")
    if not plain_list(meta.input_size, int, 3) or min(meta.input_size) < 1:
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: input_size must be [C, H, W]")
    problem = input_size_problem(meta.input_size)
    if problem:
        raise TmdeployError(f"the ONNX file's tmdeploy metadata is malformed: {problem}")
    channels = meta.input_size[0]
    if not plain_list(meta.mean, (int, float), channels) or not plain_list(meta.std, (int, float), channels):
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: mean/std need one number per channel")
    problem = normalization_problem(meta.mean, meta.std)  # as the runtime applies them: in float32
    if problem:
        raise TmdeployError(f"the ONNX file's tmdeploy metadata is malformed: {problem}")
    if (meta.preprocess, meta.layout, meta.input_dtype) not in _INPUT_FORMS:
        raise TmdeployError(f"the ONNX file's tmdeploy metadata is malformed: preprocess {meta.preprocess!r:.30}, "
                            f"layout {meta.layout!r:.30} and input_dtype {meta.input_dtype!r:.30} do not go together")
    if meta.tmdeploy_format != METADATA_FORMAT:
        raise TmdeployError(f"the ONNX file's tmdeploy metadata is format {meta.tmdeploy_format!r:.30}; this tmdeploy "
                            f"reads format {METADATA_FORMAT}")
    if meta.precision not in PRECISIONS:
        raise TmdeployError(f"the ONNX file's tmdeploy metadata is malformed: unknown precision {meta.precision!r:.30}")
    if not isinstance(meta.int8_recipe, str) or not isinstance(meta.int8_safe_on, str):
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: int8_recipe and int8_safe_on are text")
    if not (isinstance(meta.tm_blocks, dict) and all(isinstance(k, str) and isinstance(v, int)
                                                     and not isinstance(v, bool) and v >= 0
                                                     for k, v in meta.tm_blocks.items())):
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: tm_blocks must map forms to counts")
    if not plain_list(meta.tm_left, str):
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: tm_left must be a list of node names")
    if not plain_list(meta.outputs, str) or "logits" not in meta.outputs or len(set(meta.outputs)) != len(meta.outputs):
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: outputs must be a list of distinct "
                            "names with 'logits' among them")


def write(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Replace the model's metadata_props with ``meta`` (in place)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta.to_props())


def props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read(path) -> ModelMetadata:
    """Read the metadata of an ONNX file without loading its weights, checked against the graph it describes."""
    return read_model(path)[1]


def read_model(path) -> tuple[onnx.ModelProto, ModelMetadata]:
    """The graph (without external weights) and its checked metadata, for a caller that reads the graph too."""
    model = onnxfile.load(path)
    try:
        meta = ModelMetadata.from_props(props(model))
    except TmdeployError as err:  # name the file: a command may read several
        raise TmdeployError(f"{path}: {err}") from err
    check_graph(model, meta, path)
    return model, meta


def read_or_assume(path) -> tuple[ModelMetadata, str | None]:
    """The file's metadata, or for a plain ONNX file without tmdeploy's what its graph shows, and a line saying
    what was assumed (None when nothing was): applications and the server take any image classifier."""
    model = onnxfile.load(path)
    if props(model).get("tmdeploy_format") is not None:
        return read(path), None
    return assumed_from_graph(model, path)


def assumed_from_graph(model: onnx.ModelProto, path) -> tuple[ModelMetadata, str]:
    """Metadata read off a plain graph: one image input (float32 N×C×H×W, fed as given, or uint8 N×H×W×C
    pixels) and the first output as N×classes logits, named by index."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise TmdeployError(f"{path}: no tmdeploy metadata, and the graph takes {len(inputs)} inputs; an image "
                            f"classifier takes one")
    dims, kind = _dims(inputs[0]), inputs[0].type.tensor_type.elem_type
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]) or \
            kind not in (onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8):
        raise TmdeployError(f"{path}: no tmdeploy metadata, and its input {dims[:8]} "
                            f"{onnx.TensorProto.DataType.Name(kind).lower()} is not an image batch (float32 "
                            f"N×C×H×W or uint8 N×H×W×C)")
    pixels = kind == onnx.TensorProto.UINT8
    size = [dims[3], dims[1], dims[2]] if pixels else dims[1:]
    outputs = [v.name for v in model.graph.output]
    logits = _dims(model.graph.output[0])
    if len(logits) != 2 or not isinstance(logits[1], int) or logits[1] < 1:
        raise TmdeployError(f"{path}: no tmdeploy metadata, and its first output {logits[:8]} is not N×classes "
                            f"logits")
    meta = ModelMetadata(arch="unknown", class_names=[str(i) for i in range(logits[1])], input_size=size,
                         mean=[0.0] * size[0], std=[1.0] * size[0], layout="NHWC" if pixels else "NCHW",
                         input_dtype="uint8" if pixels else "float32", preprocess="baked" if pixels else "none",
                         tm_form="none", opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
                         outputs=outputs)
    c, h, w = size
    fed = f"uint8 pixels (N, {h}, {w}, {c})" if pixels else f"float32 images (N, {c}, {h}, {w}) as given (mean 0, std 1)"
    note = (f"{path} has no tmdeploy metadata: assumed its input '{clean(inputs[0].name)[:60]}' takes {fed}, and "
            f"its output '{clean(outputs[0])[:60]}' holds the logits of classes 0..{logits[1] - 1}")
    if isinstance(dims[0], int):
        raise TmdeployError(f"{path}: the graph's batch axis is fixed at {dims[0]}; export it with a dynamic batch "
                            f"axis")
    return meta, note


def _dims(value: onnx.ValueInfoProto) -> list:
    """A graph value's shape: sizes, symbolic names, or "?" for an axis with neither."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in value.type.tensor_type.shape.dim]


def check_graph(model: onnx.ModelProto, meta: ModelMetadata, path) -> None:
    """The metadata must describe the graph's real input and outputs: the runtime feeds what it says and the
    parity check compares what it names, so a mismatch would fail inside onnxruntime or polygraphy instead."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise TmdeployError(f"{path}: the graph takes {len(inputs)} inputs "
                            f"({', '.join(v.name[:50] for v in inputs[:5]) or 'none'}); a tmdeploy model takes one")
    tensor = inputs[0].type.tensor_type
    dims = _dims(inputs[0])
    graph_type = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    wanted_type = "uint8" if meta.input_dtype == "uint8" else "float"
    if (tuple(dims[1:]), graph_type) != (meta.sample_shape, wanted_type):
        raise TmdeployError(f"{path}: the metadata describes input {batch_shape(meta.sample_shape)} "
                            f"tensor({wanted_type}), but the graph takes {dims[:8]} tensor({graph_type})")
    if isinstance(dims[0], int):
        raise TmdeployError(f"{path}: the graph's batch axis is fixed at {dims[0]}; a tmdeploy model takes any batch "
                            f"size (export it again)")
    outputs = {v.name: _dims(v) for v in model.graph.output}
    missing = [name for name in meta.outputs if name not in outputs]
    if missing:
        raise TmdeployError(f"{path}: the metadata names output(s) {', '.join(missing)}, but the graph has "
                            f"{', '.join(o[:50] for o in outputs)}")
    extra = [name for name in outputs if name not in meta.outputs]
    if extra:
        raise TmdeployError(f"{path}: the graph has output(s) {', '.join(o[:50] for o in extra[:5])} that the "
                            f"metadata does not name")
    shape = outputs["logits"]
    if shape and (len(shape) != 2 or isinstance(shape[1], int) and shape[1] != len(meta.class_names)):
        raise TmdeployError(f"{path}: the metadata names {len(meta.class_names)} classes, but the graph's logits "
                            f"have shape {shape[:8]}")


# ---- what the graph takes: checks and preprocessing (pure numpy) ------------------------------------


def to_numpy(images) -> np.ndarray:
    """A numpy view of a numpy array, a torch tensor (detached, on the CPU) or a nested list."""
    if type(images).__module__.split(".")[0] == "torch":
        images = _torch_to_numpy(images)
    try:
        return np.asarray(images)
    except (ValueError, TypeError, OverflowError) as err:  # ragged nested lists, ints too large, ...
        raise TmdeployError(f"images are not an array ({type(err).__name__}: {first_line(err, 160)})") from None


def _torch_to_numpy(tensor) -> np.ndarray:
    """A torch tensor of any layout, device and dtype as numpy.

    Sparse and quantized tensors are made dense; float types numpy lacks (bfloat16, float8) become
    float32, which holds every value they can; a meta tensor has no values and is refused.
    """
    import torch  # already loaded: ``tensor`` is one of its tensors

    try:
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise TmdeployError("images are a meta tensor: it has a shape but no values")
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        if tensor.is_quantized:
            tensor = tensor.dequantize()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
            tensor = tensor.float()
        return tensor.cpu().resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError, NotImplementedError, ValueError) as err:
        raise TmdeployError(f"images: cannot read this torch tensor ({type(err).__name__}: "
                            f"{first_line(err, 160)})") from None


def _prepared(images, meta: ModelMetadata, check_finite: bool) -> np.ndarray:
    """Input already in the graph's form, checked: normalized float32 NCHW, or uint8 NHWC for baked graphs."""
    x = to_numpy(images)
    if meta.preprocess == "baked":
        if x.dtype != np.uint8:
            raise TmdeployError(f"expected uint8 pixels (the model has its preprocessing baked in), got {x.dtype}")
        return np.ascontiguousarray(_check_shape(x, meta.sample_shape, "images"))
    if not np.issubdtype(x.dtype, np.floating):
        raise TmdeployError(f"expected normalized float images, got {x.dtype} "
                            f"(raw pixels? use classify() or predict(..., raw=True))")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, which the check then names
        x = np.ascontiguousarray(_check_shape(x, meta.sample_shape, "images"), dtype=np.float32)
    if check_finite:
        _check_finite(x)
    return x


def _from_raw(images, meta: ModelMetadata, check_finite: bool) -> np.ndarray:
    """Raw images (uint8 NHWC 0..255 or float NCHW in [0, 1]) → the graph's input, per the metadata."""
    x = to_numpy(images)
    c, h, w = meta.input_size
    baked = meta.preprocess == "baked"
    if x.dtype == np.uint8:
        x = _check_shape(x, (h, w, c), "raw uint8 images (N, H, W, C)")
        if baked:
            return np.ascontiguousarray(x)
        unit = x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    elif np.issubdtype(x.dtype, np.floating):
        with np.errstate(over="ignore"):  # beyond float32's range: Inf, refused below as out of [0, 1]
            unit = _check_shape(x, (c, h, w), "raw float images (N, C, H, W)").astype(np.float32)
        if check_finite or baked:  # NaN has no pixel value: a baked graph cannot take it at all
            _check_finite(unit)
        _check_unit_range(unit)
        if baked:
            return np.ascontiguousarray(np.rint(np.clip(unit, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1))
    else:
        raise TmdeployError(f"expected raw images as uint8 pixels or floats in [0, 1], got {x.dtype}")
    mean = np.asarray(meta.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(meta.std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((unit - mean) / std, dtype=np.float32)


def batch_shape(sample) -> str:
    """``(N, C, H, W)``-style text for a sample shape with a batch axis in front."""
    return "(" + ", ".join(["N", *map(str, sample)]) + ")"


def _check_shape(x: np.ndarray, sample: tuple[int, ...], what: str) -> np.ndarray:
    if x.ndim != len(sample) + 1 or tuple(x.shape[1:]) != tuple(sample):
        hint = " (one image? add a batch axis: images[None])" if x.ndim == len(sample) else ""
        raise TmdeployError(f"expected {what} of shape {batch_shape(sample)}, got {tuple(x.shape)}{hint}")
    if len(x) == 0:
        raise TmdeployError("expected at least one image, got an empty batch")
    return x


def _check_finite(x: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.size:
        rows = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
        raise TmdeployError(f"images contain NaN or Inf in {bad.size} row(s) ({rows}); "
                            f"fix them, or pass check_finite=False to get NaN logits for those rows")


def _check_unit_range(x: np.ndarray) -> None:
    finite = x[np.isfinite(x)]
    if finite.size and (finite.min() < -_RANGE_TOLERANCE or finite.max() > 1 + _RANGE_TOLERANCE):
        raise TmdeployError(f"raw float images must be in [0, 1], got values in [{finite.min():.4g}, "
                            f"{finite.max():.4g}] (0..255 pixels? pass them as uint8; already normalized? "
                            f"use predict() without raw)")
