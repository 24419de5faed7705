"""tmdeploy: template-matching CNNs from a PyTorch checkpoint to ONNX and TensorRT, verified and benchmarked."""

__version__ = "0.1.0"
