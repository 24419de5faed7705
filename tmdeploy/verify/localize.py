"""Name the first block where the ONNX graph stops computing what PyTorch computes.

The ONNX side runs with every tensor marked as an output (polygraphy's MARK_ALL); each node carries the
PyTorch module path it was exported from (``tmdeploy.module``, written at export), so a module's ONNX
output is the output of the last node in its scope. PyTorch module outputs come from forward hooks.
Only modules whose output means the same thing on both sides are compared: not the convolutions and
BatchNorms that export folds together, and nothing inside a template-matching block (its export form
scales scores by 1/τ), only the block itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from polygraphy.comparator import Comparator
from torch import nn

from tmdeploy.errors import TmdeployError
from tmdeploy.export.graph import MODULE_KEY
from tmdeploy.models.layers import TemplateMatching
from tmdeploy.verify.runners import onnxrt_runner
from tmdeploy.verify.stats import Tolerance

_FOLDED = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


def _onnx_module_outputs(onnx_path) -> dict[str, str]:
    """Module path → name of the tensor its last node produces (nodes are in topological order)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    last = {}
    for node in model.graph.node:
        scope = next((p.value for p in node.metadata_props if p.key == MODULE_KEY), None)
        while scope:  # the node also ends every enclosing module up to here
            last[scope] = node.output[0]
            scope = scope.rpartition(".")[0]
    return last


def _comparable(module: nn.Module, name: str, inside_tm: set[str]) -> bool:
    return not isinstance(module, _FOLDED) and not any(name.startswith(p + ".") for p in inside_tm)


def _enclosing_block(root: nn.Module, name: str) -> str:
    """The outermost non-container module on the path to ``name`` below the network: its block."""
    parts = name.split(".")
    for depth in range(2, len(parts) + 1):
        path = ".".join(parts[:depth])
        if not isinstance(root.get_submodule(path), (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return path
    return name


def first_divergence(reference: nn.Module, onnx_path, feed: dict, tol: Tolerance, device: str = "cpu") -> dict | None:
    tensors = _onnx_module_outputs(onnx_path)
    if not tensors:
        raise TmdeployError(f"{onnx_path} has no module scopes (export it with tmdeploy to use --localize)")
    inside_tm = {n for n, m in reference.named_modules() if isinstance(m, TemplateMatching)}
    recorded: list[tuple[str, nn.Module, np.ndarray]] = []
    hooks = []
    for name, module in reference.named_modules():
        if name and name in tensors and _comparable(module, name, inside_tm):
            def hook(mod, _inputs, output, name=name):
                if isinstance(output, torch.Tensor):
                    recorded.append((name, mod, output.detach().float().numpy()))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            reference(*[torch.from_numpy(v) for v in feed.values()])
    finally:
        for h in hooks:
            h.remove()
    calls = {}
    for name, _, _ in recorded:
        calls[name] = calls.get(name, 0) + 1
    recorded = [r for r in recorded if calls[r[0]] == 1]  # a module called twice maps to no single tensor
    runner_results = Comparator.run([onnxrt_runner(onnx_path, mark_all=True, device=device)], data_loader=[feed])
    onnx_values = runner_results[0][1][0]
    atol = tol.atol if np.isfinite(tol.atol) else 1e-2
    rtol = tol.rtol if np.isfinite(tol.rtol) else 1e-2
    for name, module, expected in recorded:  # hooks fire in completion order: inner blocks first
        got = onnx_values[tensors[name]] if tensors[name] in onnx_values else None
        if got is None or got.shape != expected.shape:
            continue
        err = np.abs(got.astype(np.float64) - expected)
        if (err > atol + rtol * np.abs(expected)).any():
            block = _enclosing_block(reference, name)
            return {"block": block.removeprefix("model."), "type": type(reference.get_submodule(block)).__name__,
                    "module": name.removeprefix("model."), "module_type": type(module).__name__,
                    "max_abs_error": float(err.max()), "onnx_tensor": tensors[name]}
    return None
