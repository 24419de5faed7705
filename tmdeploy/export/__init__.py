"""Export stage: checkpoint → ONNX (exact template-matching forms, BN folded, metadata), lower precision.

Names are imported lazily, so that reading an ONNX file's metadata (``tmdeploy.export.metadata``, used by
the runtime and the server) does not pay for importing torch.
"""

import importlib

_LAZY = {
    "DEFAULT_FORM": "tmdeploy.export.forms", "FORMS": "tmdeploy.export.forms",
    "ModelMetadata": "tmdeploy.export.metadata",
    "ExportOptions": "tmdeploy.export.to_onnx", "deploy_module": "tmdeploy.export.to_onnx",
    "export_onnx": "tmdeploy.export.to_onnx", "to_model_proto": "tmdeploy.export.to_onnx",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tmdeploy.export' has no attribute '{name}'")
