"""Verify stage: prove the ONNX file computes what the PyTorch checkpoint computes (:mod:`.parity`).

Re-exported lazily, so that ``tmdeploy.verify.stats`` imports without torch or polygraphy.
"""

from tmdeploy.optional import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "CheckOptions": "tmdeploy.verify.options",
    **{name: "tmdeploy.verify.parity" for name in ("CheckReport", "References", "check", "make_feeds",
                                                     "write_report")},
})
