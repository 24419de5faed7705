"""Architecture registry (timm-style): a dict from name to factory function.

Factories take ``num_classes`` and ``in_chans`` plus their own keyword arguments and return an
``nn.Module``. :func:`create` records ``arch_name`` and ``arch_kwargs`` on the model so a checkpoint can
rebuild it with ``create(model.arch_name, **model.arch_kwargs)``.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from tmdeploy.errors import UsageError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | Callable[..., nn.Module] | None = None):
    """Register a factory under ``name`` (default: the function name with ``_`` read as ``-``).

    Usable as ``@register_model("rn26-aux")`` or bare ``@register_model``.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name if isinstance(name, str) else fn.__name__.replace("_", "-")
        if key in _MODELS:
            raise ValueError(f"architecture {key!r} is registered twice")
        _MODELS[key] = fn
        return fn

    if callable(name):  # bare @register_model
        return decorator(name)
    return decorator


def list_models() -> list[str]:
    """All registered architecture names, sorted."""
    return sorted(_MODELS)


def create(name: str, num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
    """Build the architecture ``name``; unknown names and bad sizes raise :class:`UsageError`."""
    if name not in _MODELS:
        raise UsageError(f"unknown architecture '{name}'; choose one of: {', '.join(list_models())}")
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{label} must be a positive integer, got {value!r}")
    factory = _MODELS[name]
    try:  # check the options against the signature only, so bugs inside the factory are not masked
        inspect.signature(factory).bind(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise UsageError(f"bad options for architecture '{name}': {exc}") from exc
    model = factory(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.arch_name = name
    model.arch_kwargs = {"num_classes": num_classes, "in_chans": in_chans, **kwargs}
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
