"""Architecture registry (timm-style): each name maps to a factory function and its default config.

Factories take ``num_classes`` and ``in_chans`` plus their own keyword arguments and return an
``nn.Module``. :func:`create` records ``arch_name`` and ``arch_kwargs`` on the model so a checkpoint can
rebuild it with ``create(model.arch_name, **model.arch_kwargs)``, and ``default_input_size`` from the config.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from tmdeploy.errors import UsageError


@dataclass(frozen=True)
class DefaultConfig:
    """What an architecture assumes of its input when no checkpoint card says (timm's ``pretrained_cfg``).

    ``mean`` and ``std`` apply to every channel; they are placeholders for weights that come without a card.
    """

    image_size: int = 32  # H = W: the CIFAR-style stems and strides are laid out for 32×32
    mean: float = 0.5
    std: float = 0.5

    def input_size(self, in_chans: int) -> tuple[int, int, int]:
        return (in_chans, self.image_size, self.image_size)


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    config: DefaultConfig


_MODELS: dict[str, _Entry] = {}


def register_model(name: str, config: DefaultConfig = DefaultConfig()):
    """Register the decorated factory under ``name``, spelled out so every architecture can be found by grep."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"architecture {name!r} is registered twice")
        _MODELS[name] = _Entry(fn, config)
        return fn

    return decorator


def list_models() -> list[str]:
    """All registered architecture names, sorted."""
    return sorted(_MODELS)


def create(name: str, num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
    """Build the architecture ``name``; unknown names and bad sizes raise :class:`UsageError`."""
    entry = _entry(name)
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{label} must be a positive integer, got {value!r}")
    try:  # check the options against the signature only, so bugs inside the factory are not masked
        inspect.signature(entry.factory).bind(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise UsageError(f"bad options for architecture '{name}': {exc}") from exc
    model = entry.factory(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.arch_name = name
    model.arch_kwargs = {"num_classes": num_classes, "in_chans": in_chans, **kwargs}
    model.default_input_size = entry.config.input_size(in_chans)
    return model


def default_config(name: str) -> DefaultConfig:
    """The config ``name`` was registered with; unknown names raise :class:`UsageError`."""
    return _entry(name).config


def _entry(name: str) -> _Entry:
    if name not in _MODELS:
        raise UsageError(f"unknown architecture '{name}'; choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
