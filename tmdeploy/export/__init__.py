"""Export stage: checkpoint → ONNX (exact template-matching forms, BN folded, metadata), lower precision.

Re-exported lazily: reading an ONNX file's metadata (``tmdeploy.export.metadata``, used by the runtime and
the server) and the options (``tmdeploy.export.options``, used by the CLI) must not import torch.
"""

from tmdeploy.optional import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "DEFAULT_FORM": "tmdeploy.export.options", "FORMS": "tmdeploy.export.options",
    "ExportOptions": "tmdeploy.export.options", "ModelMetadata": "tmdeploy.export.metadata",
    "deploy_module": "tmdeploy.export.to_onnx", "export_onnx": "tmdeploy.export.to_onnx",
    "to_model_proto": "tmdeploy.export.to_onnx",
})
