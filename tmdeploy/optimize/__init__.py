"""Optimize stage: the fastest deployment that keeps accuracy, chosen by measurement (:mod:`.search`).

Re-exported lazily, so that ``tmdeploy.optimize.options`` (the CLI's) imports without torch.
"""

from tmdeploy.optional import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "OptimizeOptions": "tmdeploy.optimize.options", "STRATEGIES": "tmdeploy.optimize.options",
    "OptimizeResult": "tmdeploy.optimize.search", "optimize": "tmdeploy.optimize.search",
    "export_auto": "tmdeploy.optimize.auto_form", "fastest_form": "tmdeploy.optimize.auto_form",
})
