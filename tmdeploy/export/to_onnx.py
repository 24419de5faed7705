"""Checkpoint → self-describing, statistics-free ONNX.

Pipeline: rebuild the model from the checkpoint, swap template-matching blocks for their exact export
form (τ and μ folded into weights), wrap with the optional baked preprocessing and per-patch output,
``torch.onnx.export`` (the torch.export-based exporter), fold BatchNorm into convolutions, clean up with
onnx-graphsurgeon, check fully, write metadata, and write the file atomically.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from torch import Tensor, nn

from tmdeploy import __version__, data
from tmdeploy.checkpoint import Checkpoint, check_finite
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.export import forms, graph
from tmdeploy.export.choices import DEFAULT_OPSET, MIN_OPSET
from tmdeploy.export import precision as lowering
from tmdeploy.export.metadata import ModelMetadata
from tmdeploy.export.metadata import write as write_metadata
from tmdeploy.fileio import atomic_write, check_output

INPUT_NAME = "images"


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    tm_form: str = forms.DEFAULT_FORM
    patch_logits: bool = False
    bake_preprocess: bool = False
    precision: str = "fp32"
    int8_target: str = "tensorrt"  # "tensorrt": symmetric signed QDQ; "onnxruntime": unsigned activations
    calib_data: str | None = None  # calibration (INT8 scales, FP16 ranges) from this data's train split; None: the card's
    keep_fp32: tuple[str, ...] = ()  # extra op types or node names to keep in FP32 under --precision fp16

    def validate(self) -> None:
        if self.opset < MIN_OPSET:
            raise UsageError(
                f"--opset {self.opset} is too old: ONNX Softmax before opset 13 flattens every axis after the "
                f"given one, so the template-matching soft-max over channels would be wrong; use {MIN_OPSET} or later"
            )
        newest = onnx.defs.onnx_opset_version()
        if self.opset > newest:
            raise UsageError(f"--opset {self.opset} is newer than this onnx package supports ({newest})")
        if self.tm_form not in forms.FORMS:
            raise UsageError(f"unknown --tm-form '{self.tm_form}'; choose one of: {', '.join(forms.FORMS)}")
        if self.precision not in lowering.PRECISIONS:
            raise UsageError(f"unknown --precision '{self.precision}'; choose one of: {', '.join(lowering.PRECISIONS)}")
        if self.int8_target not in lowering.INT8_TARGETS:
            raise UsageError(f"unknown --int8-target '{self.int8_target}'; "
                             f"choose one of: {', '.join(lowering.INT8_TARGETS)}")
        if self.calib_data is not None:
            data.check_spec(self.calib_data)


class DeployModule(nn.Module):
    """What the ONNX graph computes: optional baked preprocessing, the network, and its named outputs."""

    def __init__(self, model: nn.Module, mean, std, bake_preprocess: bool, patch_logits: bool) -> None:
        super().__init__()
        self.model = model
        self.bake_preprocess = bake_preprocess
        self.patch_logits = patch_logits
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor):
        x = images
        if self.bake_preprocess:  # uint8 N×H×W×C pixels → normalized float N×C×H×W
            x = (x.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0) - self.mean) * self.inv_std
        if self.patch_logits:
            return self.model.forward_with_patch_logits(x)
        return self.model(x)


def output_names(patch_logits: bool) -> list[str]:
    return ["logits", "patch_logits"] if patch_logits else ["logits"]


def deploy_module(ckpt: Checkpoint, options: ExportOptions, model: nn.Module | None = None) -> DeployModule:
    """The module the ONNX graph must match. ``options.tm_form`` "reference" keeps the training form."""
    model = ckpt.build_model() if model is None else model
    if options.patch_logits and not getattr(model, "has_patch_logits", False):
        raise UsageError(f"--patch-logits: {ckpt.card.arch} has no per-patch class map (use a -cls or -aux model)")
    if options.tm_form != "reference":
        model = forms.apply_form(model, options.tm_form)
    return DeployModule(model, ckpt.card.mean, ckpt.card.std, options.bake_preprocess, options.patch_logits).eval()


def example_input(ckpt: Checkpoint, bake_preprocess: bool, batch: int = 2, seed: int = 0) -> Tensor:
    c, h, w = ckpt.card.input_size
    g = torch.Generator().manual_seed(seed)
    if bake_preprocess:
        return torch.randint(0, 256, (batch, h, w, c), generator=g, dtype=torch.uint8)
    return torch.randn(batch, c, h, w, generator=g)


def to_model_proto(ckpt: Checkpoint, options: ExportOptions) -> onnx.ModelProto:
    """Export, fold, clean and check; returns the in-memory graph with its metadata written."""
    options.validate()
    check_finite(ckpt.state_dict)
    calib_data = calibration_data(ckpt, options.calib_data) if options.precision != "fp32" else None
    module = deploy_module(ckpt, options)
    names = output_names(options.patch_logits)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's chatter; failures still raise
        try:
            program = torch.onnx.export(
                module, (example_input(ckpt, options.bake_preprocess),), dynamo=True, opset_version=options.opset,
                input_names=[INPUT_NAME], output_names=names, dynamic_shapes=({0: batch},), optimize=True,
                verbose=False,
            )
        except Exception as err:
            raise TmdeployError(f"torch.onnx.export failed for {ckpt.card.arch}: {str(err).splitlines()[0][:300]}") from err
    folded = graph.fold_batchnorm(program.model)
    scopes = graph.module_scopes(folded)
    proto = graph.check(graph.clean_up(ir.serde.serialize_model(folded)))
    graph.attach_module_scopes(proto, scopes)
    meta = metadata_for(ckpt, options, names)
    proto.producer_name, proto.producer_version = "tmdeploy", __version__
    write_metadata(proto, meta)
    graph.check_finite_values(proto)  # before calibration runs it: the values the FP32 graph really holds
    lowered = lowering.lower_precision(proto, options.precision, meta=meta, calib_data=calib_data,
                                       int8_target=options.int8_target, keep_fp32=options.keep_fp32)
    return graph.check_finite_values(lowered)


def calibration_data(ckpt: Checkpoint, spec: str | None) -> str:
    """The calibration data spec: ``spec``, or the data the checkpoint was trained on; checked to fit the model."""
    spec = spec or ckpt.card.training_data
    if spec is None:
        raise UsageError("the checkpoint does not record its training data: name calibration data with --calib-data")
    c, h, w = ckpt.card.input_size
    data.check_calibration_fit(spec, c, max(h, w), ckpt.card.training_data)
    return spec


def metadata_for(ckpt: Checkpoint, options: ExportOptions, outputs: list[str]) -> ModelMetadata:
    card = ckpt.card
    return ModelMetadata(
        arch=card.arch, class_names=list(card.class_names), input_size=list(card.input_size),
        mean=list(card.mean), std=list(card.std),
        layout="NHWC" if options.bake_preprocess else "NCHW",
        input_dtype="uint8" if options.bake_preprocess else "float32",
        preprocess="baked" if options.bake_preprocess else "none",
        precision=options.precision, tm_form=options.tm_form, opset=options.opset, outputs=outputs,
        source_sha256=ckpt.sha256 or "", source_checkpoint=ckpt.path.name if ckpt.path else "",
        tmdeploy_version=__version__,
    )


def default_output(ckpt: Checkpoint, suffix: str) -> Path:
    if ckpt.path is None:
        raise UsageError("no output path: pass --out")
    return ckpt.path.with_suffix(suffix)


def save_model(proto: onnx.ModelProto, path: Path, source: Path | None = None) -> Path:
    """Write atomically: a killed export leaves the previous file intact and no partial file; never over ``source``."""
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)), source)
    return path


def export_onnx(ckpt: Checkpoint, out: Path | None = None, options: ExportOptions = ExportOptions()) -> Path:
    """Export ``ckpt`` to ONNX at ``out`` (default: beside the checkpoint) and return the path."""
    out = Path(out) if out is not None else default_output(ckpt, ".onnx")
    check_output(out, ckpt.path, option="--out")  # before the export: a bad target fails at once
    return save_model(to_model_proto(ckpt, options), out, ckpt.path)

