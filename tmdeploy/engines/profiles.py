"""Batch-size ranges (TensorRT optimization profiles) and the graph input shapes they imply."""

from __future__ import annotations

from dataclasses import dataclass

from tmdeploy.errors import UsageError
from tmdeploy.values import MAX_BATCH
from tmdeploy.export.metadata import ModelMetadata


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (min..max) and the one TensorRT tunes its kernels for (opt)."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"


def parse_batch(text: str) -> BatchProfile:
    """Parse ``"N"`` (N,N,N) or ``"MIN,OPT,MAX"``; raise UsageError naming the value when it is not valid."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"batch profile '{text}': expected N or MIN,OPT,MAX with positive integers")
    lo, opt, hi = map(int, parts)
    if not lo <= opt <= hi:
        raise UsageError(f"batch profile '{text}': expected MIN <= OPT <= MAX")
    if hi > MAX_BATCH:
        raise UsageError(f"batch profile '{text}': MAX is at most {MAX_BATCH}, the exported graphs' batch limit")
    return BatchProfile(lo, opt, hi)


def profile_shapes(meta: ModelMetadata, batch: BatchProfile) -> dict[str, list[int]]:
    """min/opt/max shapes of the graph input for ``batch``: what TensorRT's optimization profile needs."""
    shape = list(meta.sample_shape)
    return {k: [getattr(batch, k), *shape] for k in ("min", "opt", "max")}
