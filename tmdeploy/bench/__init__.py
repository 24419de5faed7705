"""Bench stage: one checkpoint on every backend side by side (:mod:`.suite`).

Re-exported lazily, so that ``tmdeploy.bench.timing`` and ``tmdeploy.bench.machine`` import without torch.
"""

from tmdeploy.optional import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    **{name: "tmdeploy.bench.suite" for name in ("BenchResult", "BackendResult", "run")},
    "BenchOptions": "tmdeploy.bench.options", "DEVICES": "tmdeploy.bench.options",
    "NAMES": "tmdeploy.bench.backends",
})
