"""Error statistics per output (polygraphy's) and the tolerances each precision is held to."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_top1: float  # top-1 agreement with PyTorch, over all checked samples (and patches)
    elementwise: bool = True  # int8 outputs are judged by agreement, not element by element

    def describe(self) -> str:
        parts = [f"atol {self.atol:g}, rtol {self.rtol:g}"] if self.elementwise else []
        return ", ".join(parts + [f"top-1 agreement ≥ {self.min_top1:.0%}"])


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_top1=1.0),
    # fp16, measured on digits-trained rn26-tm/-cls/-sge/-rescnet (logits up to 397), 128 test images: the
    # smallest atol that passes at rtol 5e-2 was ≤ 9.5e-3 on ONNX Runtime CPU and ≤ 7.1e-3 with true FP16
    # arithmetic (onnx ReferenceEvaluator); largest relative error on |logit| > 1: 1.0% and 1.2%; top-1 100%.
    "fp16": Tolerance(atol=5e-2, rtol=5e-2, min_top1=0.99),
    # int8 (tmdeploy.export.precision, both recipes), digits test split: top-1 agreement with FP32 was
    # 99.2–99.4% for rn26-tm and 100% for rn26-cls; logits move by up to 0.7, so only agreement is judged.
    "int8": Tolerance(atol=math.inf, rtol=math.inf, min_top1=0.98, elementwise=False),
}


def output_stats(name: str, reference: list[np.ndarray], actual: list[np.ndarray], tol: Tolerance) -> dict:
    """Compare one output over all iterations with polygraphy's compare functions (errors, their 99th
    percentile, cosine similarity, and the element-wise verdict at ``tol``); top-1 agreement is ours.

    The iterations are compared as one batch, so the numbers and the verdict come from the same comparison.
    Relative errors are polygraphy's: relative to the ONNX side.
    """
    from polygraphy.comparator import IterationResult
    from polygraphy.comparator.compare import CosineSimilarityCompareFunc, SimpleCompareFunc

    ref = IterationResult({name: np.concatenate(reference).astype(np.float64)}, runner_name="pytorch")
    got = IterationResult({name: np.concatenate(actual).astype(np.float64)}, runner_name="onnxruntime")
    # Without element-wise tolerances (int8) the statistics are still computed; only the verdict is skipped.
    atol, rtol = (tol.atol, tol.rtol) if tol.elementwise else (0.0, 0.0)
    errors = SimpleCompareFunc(atol=atol, rtol=rtol, check_shapes=True)(ref, got)[name]
    # polygraphy computes quantiles only when it checks one: a second pass, for the 99th percentile
    p99 = SimpleCompareFunc(check_error_stat="quantile", error_quantile=0.99)(ref, got)[name]
    cosine = CosineSimilarityCompareFunc(check_shapes=True)(ref, got)[name].cosine_similarity
    agree = total = 0
    for r, a in zip(reference, actual):  # class axis is 1 for logits (N×C) and patch maps (N×C×h×w)
        agree += int((r.argmax(axis=1) == a.argmax(axis=1)).sum())
        total += r.argmax(axis=1).size
    return {
        "max_abs_error": errors.max_absdiff, "mean_abs_error": errors.mean_absdiff,
        "p99_abs_error": p99.quantile_absdiff,
        "max_rel_error": errors.max_reldiff, "mean_rel_error": errors.mean_reldiff,
        "p99_rel_error": p99.quantile_reldiff,
        "cosine_similarity": float(cosine),
        "elementwise_passed": bool(errors) or not tol.elementwise,
        "top1_agreement": agree / max(total, 1), "samples": total,
        "finite": bool(all(np.isfinite(a).all() for a in actual)),
    }
