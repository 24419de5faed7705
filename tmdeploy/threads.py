"""PyTorch's intra-op thread count, set for a block and then restored (the setting is process-wide)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run a block with ``threads`` intra-op threads (None: leave the setting alone).

    Pinning PyTorch and onnxruntime to the same count makes CPU comparisons fair; on a machine shared with
    other jobs, one thread also avoids OpenMP's barrier stalls, which slow small PyTorch work (a trace for
    export, a parity check's batches) by up to 8× there.
    """
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
