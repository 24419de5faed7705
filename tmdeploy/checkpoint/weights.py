"""Weights against the module they are for: every tensor named, shaped and typed as the module needs.

Checked before ``load_state_dict``, so a mismatch is one line naming the first tensor that does not fit, not
PyTorch's list of every key. Training scripts often save the weights of a wrapper (``model.`` from a
LightningModule's attribute, ``module.`` from DataParallel): a prefix that every name shares and that the
module's names lack is stripped, and named in the error when stripping it is not enough.
"""

from __future__ import annotations

import torch
from torch import nn


def fit_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str,
                   error=ValueError) -> dict[str, torch.Tensor]:
    """``state`` (with a common wrapper prefix stripped) if it fits ``expected`` name by name; else ``error``
    naming the first tensor that does not fit ``what``."""
    state = _strip_wrapper_prefix(state, expected, what, error)
    for name, tensor in expected.items():
        if name not in state:
            raise error(f"checkpoint does not fit {what}: tensor '{name}' is missing")
        got = state[name]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(tensor.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise error(f"checkpoint does not fit {what}: tensor '{name}' has shape {shape}, "
                        f"the architecture needs {tuple(tensor.shape)}")
        if got.is_floating_point() != tensor.is_floating_point() or got.is_complex():
            # loading would cast it silently: a complex weight loses its imaginary part, an integer one
            # escapes the finite-values check
            raise error(f"checkpoint does not fit {what}: tensor '{name}' is {got.dtype}, "
                        f"the architecture needs {tensor.dtype}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise error(f"checkpoint does not fit {what}: unexpected tensor '{unexpected[0][:100]}'")
    return state


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str, error=ValueError) -> nn.Module:
    """``module`` in eval mode with ``state`` loaded, after :func:`fit_state_dict`."""
    module.load_state_dict(fit_state_dict(state, module.state_dict(), what, error))
    return module.eval()


def _strip_wrapper_prefix(state: dict, expected: dict, what: str, error) -> dict:
    if not state or set(state) & set(expected):
        return state
    prefix = _common_prefix(state)
    if prefix is None:
        return state
    stripped = {name[len(prefix):]: tensor for name, tensor in state.items()}
    if set(stripped) & set(expected):
        return stripped
    raise error(f"checkpoint does not fit {what}: every tensor name starts with '{prefix[:60]}', and without it "
                f"they still do not match the architecture's (first: '{next(iter(stripped))[:60]}', the "
                f"architecture's first: '{next(iter(expected), '')[:60]}')")


def _common_prefix(state: dict) -> str | None:
    """The first dotted component every name shares (``model.``), or None."""
    heads = {name.split(".", 1)[0] for name in state}
    if len(heads) != 1 or not all("." in name for name in state):
        return None
    return heads.pop() + "."
