"""A model to deploy → self-describing, statistics-free ONNX.

Pipeline: take the model (a :class:`~tmdeploy.checkpoint.Deployable`, or a zoo checkpoint), swap template-matching blocks for their exact export
form (τ and μ folded into weights), wrap with the optional baked preprocessing and per-patch output,
``torch.onnx.export`` (the TorchScript exporter by default, torch.export with ``exporter="dynamo"``), fold
BatchNorm into convolutions, clean up with onnx-graphsurgeon, check fully, write metadata, and write the
file atomically. Both exporters go through the same clean-up and give graphs that pass the same checks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from tmdeploy import __version__, data
from tmdeploy.checkpoint import Deployable, as_deployable, check_finite
from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.export import forms, graph
from tmdeploy.export import precision as lowering
from tmdeploy.export.metadata import ModelMetadata
from tmdeploy.export.metadata import write as write_metadata
from tmdeploy.export.options import AUTO_FORM, EXPORTERS, TRAINING_FORM, ExportOptions
from tmdeploy.export.template_blocks import rewrite_template_blocks
from tmdeploy.fileio import atomic_write, check_output
from tmdeploy.threads import torch_threads
from tmdeploy.values import MAX_BATCH  # the dynamo exporter needs an upper bound for the symbolic batch size

INPUT_NAME = "images"
log = logging.getLogger(__name__)


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


def deploy_module(deployable: Deployable, options: ExportOptions) -> DeployModule:
    """The module the ONNX graph must match. ``options.tm_form`` TRAINING_FORM keeps the training form."""
    model = deployable.copy_module()
    if options.patch_logits and not deployable.has_patch_logits:
        raise UsageError(f"--patch-logits: {deployable.card.arch} has no per-patch class map (use a -cls or -aux model)")
    if options.tm_form != TRAINING_FORM:
        model = forms.apply_form(model, options.tm_form)
    card = deployable.card
    return DeployModule(model, card.mean, card.std, options.bake_preprocess, options.patch_logits).eval()


def example_input(deployable: Deployable, bake_preprocess: bool, batch: int = 2, seed: int = 0) -> Tensor:
    c, h, w = deployable.card.input_size
    g = torch.Generator().manual_seed(seed)
    if bake_preprocess:
        return torch.randint(0, 256, (batch, h, w, c), generator=g, dtype=torch.uint8)
    return torch.randn(batch, c, h, w, generator=g)


def to_model_proto(deployable, options: ExportOptions) -> onnx.ModelProto:
    """Export, fold, clean and check; returns the in-memory graph with its metadata written.

    ``deployable``: a :class:`~tmdeploy.checkpoint.Deployable` or a zoo checkpoint."""
    options.validate()
    ckpt = as_deployable(deployable)
    if options.tm_form == AUTO_FORM:  # timing is a later stage's work; the export stage exports one form
        raise UsageError("--tm-form auto is resolved by timing the forms: use tmdeploy.optimize.export_auto "
                         "(what `tmdeploy export --tm-form auto` calls)")
    check_finite(ckpt.module.state_dict())
    calib_data = calibration_data(ckpt, options.calib_data) if options.precision != "fp32" else None
    module = deploy_module(ckpt, options)
    names = output_names(options.patch_logits)
    example = example_input(ckpt, options.bake_preprocess)
    exporter = ckpt.exporter or options.exporter
    check_opset(options.opset, exporter)
    try:
        with torch_threads(1):  # a trace runs one small batch: more threads only wait on each other
            exported, scopes = _EXPORTERS[exporter](module, example, options.opset, names)
    except Exception as err:
        raise TmdeployError(f"torch.onnx.export failed for {ckpt.card.arch}: {first_line(err)}") from err
    proto = graph.check(graph.clean_up(exported))
    blocks, left = {}, ()
    if options.tm_form != TRAINING_FORM:  # the user's own soft-max template blocks, found in the graph
        blocks[options.tm_form] = forms.count_blocks(ckpt.module)
        proto, rewrite = rewrite_template_blocks(proto, options.tm_form)
        if rewrite.total:
            proto = graph.check(proto)
            scopes.update({new: scopes[old] for new, old in rewrite.node_origins.items() if old in scopes})
            for form, count in rewrite.counts.items():
                blocks[form] = blocks.get(form, 0) + count
        left = rewrite.unrecognised
        if rewrite.warning():
            log.warning("%s", rewrite.warning())
    graph.attach_module_scopes(proto, scopes)
    meta = metadata_for(ckpt, options, names, blocks=blocks, left=left)
    proto.producer_name, proto.producer_version = "tmdeploy", __version__
    write_metadata(proto, meta)
    graph.check_finite_values(proto)  # before calibration runs it: the values the FP32 graph really holds
    lowered = lowering.lower_precision(proto, options.precision, meta=meta, calib_data=calib_data,
                                       int8_target=options.int8_target, keep_fp32=options.keep_fp32)
    return lowered if lowered is proto else graph.check_finite_values(lowered)  # FP32: checked just above


def calibration_data(ckpt: Deployable, spec: str | None, option: str = "--calib-data") -> str:
    """The calibration data spec: ``spec``, or the data the checkpoint was trained on; checked to fit the model.
    ``option``: the calling command's flag that names the data, for the error when there is none."""
    spec = spec or ckpt.card.training_data
    if spec is None:
        raise UsageError(f"the model does not record its training data: name calibration data with {option}")
    c, h, w = ckpt.card.input_size
    data.check_calibration_fit(spec, c, max(h, w), ckpt.card.training_data)
    return spec


def check_opset(opset: int, exporter: str) -> None:
    """UsageError for an opset the exporter in use does not write, before it runs, with torch's own limits:
    past 20 the TorchScript exporter fails after printing the whole Torch IR graph on stdout (from C++), and
    past its maximum the dynamo one hands the graph to a fallback converter, which failed at 28."""
    from torch.onnx import _constants

    newest = (_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET if exporter == "torchscript"
              else _constants.ONNX_MAX_OPSET)
    if opset > newest:
        hint = "; --exporter dynamo writes newer ones" if newest < _constants.ONNX_MAX_OPSET else ""
        raise UsageError(f"--opset {opset}: the {exporter} exporter writes opsets up to {newest}{hint}")


def torchscript_graph(module: nn.Module, example: Tensor, opset: int, names: list[str]):
    """The TorchScript exporter: traces once, in a fraction of a second. Eval-mode BatchNorm after a Conv
    comes out folded already; the rest goes through the same passes as the dynamo graph."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch says this exporter is deprecated (the dynamo path stays tested, one flag away); and models
        # that check a shape in Python (SGE's H·W > 1) make the tracer warn that the check is not recorded,
        # which is what we want: shapes other than the batch size are fixed in the graph.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *names)})
    proto = graph.fold_batchnorm(onnx.load_from_string(buffer.getvalue()))
    return proto, graph.torchscript_scopes(proto, [name for name, _ in module.named_modules() if name])


def dynamo_graph(module: nn.Module, example: Tensor, opset: int, names: list[str]):
    """The torch.export-based exporter (torch's default): about 10 s for rn26, the same graph after clean-up."""
    import onnx_ir as ir

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # its progress chatter and warnings; failures still raise
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                    output_names=names, dynamic_shapes=({0: batch},), optimize=True, verbose=False)
    proto = graph.fold_batchnorm(ir.serde.serialize_model(program.model))
    return proto, graph.dynamo_scopes(proto)


# by name: the table, torch-free for the CLI's choices, is tmdeploy.export.options.EXPORTERS
_EXPORTERS = {name: globals()[function] for name, function in EXPORTERS.items()}


def metadata_for(ckpt: Deployable, options: ExportOptions, outputs: list[str], blocks: dict[str, int],
                 left=()) -> ModelMetadata:
    """The file's metadata; ``blocks``: the template-matching blocks rewritten, per form (none: no entry);
    ``left``: soft-max nodes that looked like template blocks and were left as exported."""
    card = ckpt.card
    blocks = {form: count for form, count in blocks.items() if count}
    return ModelMetadata(
        arch=card.arch, class_names=list(card.class_names), input_size=list(card.input_size),
        mean=list(card.mean), std=list(card.std),
        layout="NHWC" if options.bake_preprocess else "NCHW",
        input_dtype="uint8" if options.bake_preprocess else "float32",
        preprocess="baked" if options.bake_preprocess else "none",
        precision=options.precision, tm_form=", ".join(sorted(blocks)) or "none", tm_blocks=blocks, tm_left=list(left), opset=options.opset, outputs=outputs,
        source_sha256=ckpt.sha256 or "", source_checkpoint=ckpt.path.name if ckpt.path else "",
        tmdeploy_version=__version__,
    )


def default_output(ckpt: Deployable, suffix: str) -> Path:
    if ckpt.path is None:
        raise UsageError("no output path: pass --out")
    return ckpt.path.with_suffix(suffix)


def save_model(proto: onnx.ModelProto, path: Path, source: Path | None = None) -> Path:
    """Write atomically: a killed export leaves the previous file intact and no partial file; never over ``source``."""
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)), source)
    return path


def export_onnx(deployable, out: Path | None = None, options: ExportOptions = ExportOptions()) -> Path:
    """Export ``deployable`` (a Deployable or a zoo checkpoint) to ONNX at ``out`` (default: beside the file it
    came from) and return the path."""
    ckpt = as_deployable(deployable)
    out = Path(out) if out is not None else default_output(ckpt, ".onnx")
    check_output(out, ckpt.path, option="--out")  # before the export: a bad target fails at once
    return save_model(to_model_proto(ckpt, options), out, ckpt.path)

