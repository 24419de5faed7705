"""Export stage: checkpoint → ONNX (exact template-matching forms, BN folded, metadata), lower precision."""

from tmdeploy.export.forms import DEFAULT_FORM, FORMS
from tmdeploy.export.metadata import ModelMetadata
from tmdeploy.export.to_onnx import ExportOptions, deploy_module, export_onnx, to_model_proto

__all__ = ["DEFAULT_FORM", "FORMS", "ExportOptions", "ModelMetadata", "deploy_module", "export_onnx", "to_model_proto"]
