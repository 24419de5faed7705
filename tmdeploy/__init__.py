"""tmdeploy: template-matching CNNs from a PyTorch checkpoint to ONNX and TensorRT, verified and benchmarked.

``tmdeploy.from_module(model, input_size=..., class_names=...)`` makes any trained module deployable; it is
re-exported lazily, so that ``import tmdeploy`` (the CLI, the runtime) does not import torch.
"""

__version__ = "0.1.0"

from tmdeploy.optional import lazy_exports  # noqa: E402 - after __version__, which tmdeploy's modules read

__getattr__, __all__ = lazy_exports(__name__, {
    "Deployable": "tmdeploy.checkpoint", "from_module": "tmdeploy.checkpoint", "load_model": "tmdeploy.checkpoint",
})
