"""What the benchmark scripts share: untrained checkpoints, the machine caption, Markdown tables."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from tmdeploy import checkpoint, models
from tmdeploy.bench import machine
from tmdeploy.report.markdown import number, table

__all__ = ["caption", "number", "op_times", "print_table", "untrained"]


def untrained(arch: str, in_chans: int = 3, size: int = 32, seed: int = 0) -> checkpoint.Checkpoint:
    """A seeded, untrained checkpoint in memory: enough where speed is all that is measured."""
    torch.manual_seed(seed)
    model = models.create(arch, num_classes=10, in_chans=in_chans).eval()
    card = checkpoint.card_for(model, [str(i) for i in range(10)], [0.5] * in_chans, [0.25] * in_chans,
                               input_size=(in_chans, size, size))
    return checkpoint.Checkpoint(card, {k: v.detach().clone() for k, v in model.state_dict().items()})


def caption(info: dict | None = None, ort_threads: int | None = None) -> str:
    """The machine line every table is printed under (``info``: a bench result's, else this process's)."""
    return f"Machine: {machine.summary(info or machine.describe('cpu', ort_threads))}"


def print_table(title: str, header: list[str], rows: list[list[str]], notes: list[str], text_columns: int = 1) -> None:
    print(f"\n### {title}\n")
    print("\n".join(table(header, rows, text_columns)))
    print()
    for note in notes:
        print(f"- {note}")


def op_times(proto, x: np.ndarray, threads: int | None, runs: int, warmup: int = 3) -> Counter:
    """Milliseconds per run spent in each op type (after onnxruntime's fusions), from its own profile of the runs
    after ``warmup``; ``threads`` None: onnxruntime's default."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="tmdeploy-profile-") as tmp:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    timed = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")[warmup:]
    per_run = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed[0]:
            per_run[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
    return per_run
