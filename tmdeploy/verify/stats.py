"""Error statistics per output and the tolerances each precision is held to."""

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


def output_stats(reference: list[np.ndarray], actual: list[np.ndarray], rtol: float = 0.0) -> dict:
    """Compare one output over all iterations: errors, the tolerance that would pass, cosine, top-1."""
    ref = np.concatenate([r.astype(np.float64).ravel() for r in reference])
    got = np.concatenate([a.astype(np.float64).ravel() for a in actual])
    abs_err = np.abs(got - ref)
    rel_err = abs_err / np.maximum(np.abs(ref), 1e-12)
    norm = float(np.linalg.norm(ref) * np.linalg.norm(got))
    agree = total = 0
    for r, a in zip(reference, actual):  # class axis is 1 for logits (N×C) and patch maps (N×C×h×w)
        agree += int((r.argmax(axis=1) == a.argmax(axis=1)).sum())
        total += r.argmax(axis=1).size
    finite = bool(np.isfinite(got).all())
    return {
        "max_abs_error": float(abs_err.max()), "mean_abs_error": float(abs_err.mean()),
        "p99_abs_error": float(np.quantile(abs_err, 0.99)),
        "max_rel_error": float(rel_err.max()), "mean_rel_error": float(rel_err.mean()),
        "p99_rel_error": float(np.quantile(rel_err, 0.99)),
        # smallest atol that passes with the check's rtol, and smallest rtol that passes with atol 0
        "min_passing_atol": float(np.maximum(abs_err - (rtol if math.isfinite(rtol) else 0.0) * np.abs(ref), 0).max()),
        "min_passing_rtol": float(rel_err.max()),
        "cosine_similarity": float(ref @ got / norm) if norm > 0 else float(np.array_equal(ref, got)),
        "top1_agreement": agree / max(total, 1), "samples": total, "finite": finite,
    }
