"""The description an exported ONNX file carries about itself, in ``metadata_props``.

An application that loads the file with onnxruntime alone reads these with
``session.get_modelmeta().custom_metadata_map``: plain string keys, lists and numbers as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
import onnx

from tmdeploy import onnxfile
from tmdeploy.errors import TmdeployError
from tmdeploy.values import input_size_problem, normalization_problem

METADATA_FORMAT = "1"
_JSON_FIELDS = {"class_names", "input_size", "mean", "std", "outputs"}


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
    tm_form: str = ""
    opset: int = 0
    outputs: list[str] = field(default_factory=lambda: ["logits"])
    source_sha256: str = ""
    source_checkpoint: str = ""
    tmdeploy_version: str = ""
    tmdeploy_format: str = METADATA_FORMAT

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
            detail = str(err).splitlines()[0][:160] if str(err) else ""
            raise TmdeployError(
                f"the ONNX file's tmdeploy metadata is malformed ({type(err).__name__}: {detail})") from err
        _validate(meta)
        return meta


def _validate(meta: ModelMetadata) -> None:
    def ok_list(value, kind, length=None):
        return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value) and (
            length is None or len(value) == length
        )

    if not ok_list(meta.class_names, str) or not meta.class_names:
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: class_names must be a list of strings")
    if not ok_list(meta.input_size, int, 3) or min(meta.input_size) < 1:
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: input_size must be [C, H, W]")
    problem = input_size_problem(meta.input_size)
    if problem:
        raise TmdeployError(f"the ONNX file's tmdeploy metadata is malformed: {problem}")
    channels = meta.input_size[0]
    if not ok_list(meta.mean, (int, float), channels) or not ok_list(meta.std, (int, float), channels):
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: mean/std need one number per channel")
    problem = normalization_problem(meta.mean, meta.std)  # as the runtime applies them: in float32
    if problem:
        raise TmdeployError(f"the ONNX file's tmdeploy metadata is malformed: {problem}")
    if meta.preprocess not in ("none", "baked") or meta.layout not in ("NCHW", "NHWC"):
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: unknown preprocess or layout")
    if not ok_list(meta.outputs, str) or "logits" not in meta.outputs or len(set(meta.outputs)) != len(meta.outputs):
        raise TmdeployError("the ONNX file's tmdeploy metadata is malformed: outputs must be a list of distinct "
                            "names with 'logits' among them")


def write(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Replace the model's metadata_props with ``meta`` (in place)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta.to_props())


def props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read(path) -> ModelMetadata:
    """Read the metadata of an ONNX file without loading its weights."""
    return ModelMetadata.from_props(props(onnxfile.load(path)))
