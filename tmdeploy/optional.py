"""Deferred and optional imports in one place.

``lazy_exports`` lets a stage's ``__init__`` re-export its API without importing it, so that importing a
light module of the stage (``tmdeploy.verify.stats``, ``tmdeploy.bench.timing``) does not import torch.
``require`` imports an optional dependency or raises one TmdeployError naming the extra that installs it.
"""

from __future__ import annotations

import importlib

from tmdeploy.errors import TmdeployError, first_line

# The pip extra of tmdeploy that brings each optional package.
EXTRAS = {"tensorrt": "gpu", "onnxruntime-gpu": "gpu", "nvidia-pytriton": "serve", "tritonclient": "serve",
          "openvino": "openvino"}


def install_hint(package: str) -> str:
    return f'pip install "tmdeploy[{EXTRAS[package]}]" ({package})'


def require(module: str, package: str, what: str):
    """``module``, or a TmdeployError: ``{what} is not installed[ (why)]: pip install "tmdeploy[extra]" (package)``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        reason = "" if isinstance(err, ModuleNotFoundError) else f" ({first_line(err)})"
        raise TmdeployError(f"{what} is not installed{reason}: {install_hint(package)}") from None


def lazy_exports(package: str, names: dict[str, str]):
    """``(__getattr__, __all__)`` for a package that re-exports ``names`` (name → defining module) on first use."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__, sorted(names)
