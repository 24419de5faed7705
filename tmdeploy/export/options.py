"""What ``tmdeploy export`` can be asked, its defaults and their validation, importable without torch
(the CLI builds its options and help from this class)."""

from __future__ import annotations

from dataclasses import dataclass

from tmdeploy.errors import UsageError, check_choice
from tmdeploy.values import check_distinct

# The TM export forms (docs/models.md, "Export forms"), each with the name of its PyTorch module in
# tmdeploy.export.forms (imported there on use: it needs torch); the graph-level rewrite of a user's own
# blocks (tmdeploy.export.template_lowering) has one lowering per form. Iterating gives the names.
FORMS = {"folded": "Folded", "folded-padded": "FoldedPadded", "deferred": "Deferred", "normalized": "Normalized"}
DEFAULT_FORM = "normalized"  # fastest on ONNX Runtime CPU: see benchmarks/tm_forms.py and the README table
# times the forms for this model on ONNX Runtime CPU and exports the fastest (tmdeploy.optimize.auto_form); the
# fixed default stays the default, so CI exports do not depend on a machine's load
AUTO_FORM = "auto"
# internal, never a --tm-form choice: the training form exported as it is (no block rewritten); parity tests
# and benchmarks compare the forms against it
TRAINING_FORM = "reference"
# the torch.onnx exporters, each with its function in tmdeploy.export.to_onnx (imported there on use: torch)
EXPORTERS = {"torchscript": "torchscript_graph", "dynamo": "dynamo_graph"}
PRECISIONS = ("fp32", "fp16", "int8")
INT8_TARGETS = ("tensorrt", "onnxruntime", "onnxruntime-vnni")
MIN_OPSET = 13  # ONNX Softmax before opset 13 flattens from the axis: a channel soft-max would be wrong


@dataclass(frozen=True)
class ExportOptions:
    opset: int = 18
    tm_form: str = DEFAULT_FORM
    # torchscript: 0.2 s for rn26 and the same graph after clean-up; dynamo: torch.export, about 10 s
    # (benchmarks/export_cost.py, docs/models.md "Export")
    exporter: str = "torchscript"
    patch_logits: bool = False
    bake_preprocess: bool = False
    precision: str = "fp32"
    # "tensorrt": symmetric signed QDQ; "onnxruntime": unsigned activations, 7-bit weights (exact on any x86
    # CPU); "onnxruntime-vnni": 8-bit weights, exact only with VNNI or AMX (tmdeploy.export.int8_saturation)
    int8_target: str = "tensorrt"
    # calibration (INT8 scales, FP16 value ranges) from this data's train split; None: the data the checkpoint
    # was trained on, as its card records
    calib_data: str | None = None
    keep_fp32: tuple[str, ...] = ()  # extra op types or node names to keep in FP32 under --precision fp16

    def validate(self) -> None:
        import onnx

        if self.opset < MIN_OPSET:
            raise UsageError(
                f"--opset {self.opset} is too old: ONNX Softmax before opset 13 flattens every axis after the "
                f"given one, so the template-matching soft-max over channels would be wrong; use {MIN_OPSET} or later"
            )
        newest = onnx.defs.onnx_opset_version()
        if self.opset > newest:
            raise UsageError(f"--opset {self.opset} is newer than this onnx package supports ({newest})")
        check_choice(self.tm_form, (*FORMS, AUTO_FORM), "--tm-form")
        check_choice(self.exporter, EXPORTERS, "--exporter")
        check_choice(self.precision, PRECISIONS, "--precision")
        check_choice(self.int8_target, INT8_TARGETS, "--int8-target")
        if self.keep_fp32 and self.precision != "fp16":
            raise UsageError(f"--keep-fp32 applies to --precision fp16 only, not {self.precision}")
        check_distinct("--keep-fp32", self.keep_fp32)
        if self.calib_data is not None:
            from tmdeploy import data  # torch: only when there is a spec to check

            data.check_spec(self.calib_data)
