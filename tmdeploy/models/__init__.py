"""Model zoo: CIFAR-style baselines and their template-matching, SGE, ResCNet and ConvMix variants.

``create(name, num_classes=10, in_chans=3, **kwargs)`` builds a registered architecture; every model has
``forward(x) -> logits`` and ``forward_with_patch_logits(x) -> (logits, patch_logits | None)``, plus the
attributes ``has_patch_logits``, ``patch_logits_in_inference``, ``arch_name``, ``arch_kwargs`` and
``default_input_size``. The blocks the families share are in :mod:`tmdeploy.models.layers`.
"""

from . import densenet, layers, resnet, wrn  # noqa: F401  (importing the families registers the architectures)
from .densenet import DenseLayer
from .losses import auxiliary_loss
from .registry import DefaultConfig, count_parameters, create, default_config, list_models, register_model

__all__ = [
    "DefaultConfig",
    "DenseLayer",
    "auxiliary_loss",
    "count_parameters",
    "create",
    "default_config",
    "layers",
    "list_models",
    "register_model",
]
