"""The runtimes that run tmdeploy's ONNX files, one module each (:mod:`.registry` says how to add one).

Torch-free: the CLI reads the names and devices from here.
"""

from tmdeploy.runtimes.base import Line, Request, Runtime
from tmdeploy.runtimes.registry import (ALL, CHECK_RUNTIMES, DEVICES, RUNTIMES, VERSIONED, by_label, get, require,
                                        versions, where)

__all__ = ["ALL", "CHECK_RUNTIMES", "DEVICES", "Line", "RUNTIMES", "Request", "Runtime", "VERSIONED", "by_label", "get", "require",
           "versions", "where"]
