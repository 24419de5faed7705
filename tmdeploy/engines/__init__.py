"""Deployment targets beyond the ONNX file: TensorRT engines and Triton model repositories.

Everything decidable before TensorRT runs (profiles, cache keys, sidecars, precision plans and checks)
is plain Python here, so it is tested on machines without a GPU.
"""

from tmdeploy.engines.profiles import BatchProfile, parse_batch

__all__ = ["BatchProfile", "parse_batch"]
