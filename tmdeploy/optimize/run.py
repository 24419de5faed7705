"""The one typed context every optimize step reads and fills (:class:`Run`), instead of loose dicts.

It holds what a run is given (the model, the options, the data, the scratch folder, the live table) and
what its steps make and share: each candidate's graph, the graphs shared between runtimes, one session per
candidate (opened once, so parity, accuracy and timing run what ships), and the graphs already built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from tmdeploy.checkpoint import Deployable
from tmdeploy.optimize.candidates import Candidate
from tmdeploy.optimize.options import OptimizeOptions
from tmdeploy.optimize.progress import LiveTable
from tmdeploy.runtimes import Request
from tmdeploy.verify.options import CheckOptions
from tmdeploy.verify.parity import References


@dataclass
class HeldOut:
    """The held-out split accuracy is measured on, and PyTorch FP32's top-1 on it."""

    images: np.ndarray
    labels: np.ndarray
    record: dict  # its description in status.json (spec, split, samples)
    reference: np.ndarray  # PyTorch eager's top-1 on the CPU


@dataclass
class Run:
    ckpt: Deployable
    options: OptimizeOptions  # effective: --quick applied, out, forms and runtimes filled
    spec: str  # the data: accuracy on its test split, calibration on its train split
    scratch: Path  # everything is made here, and committed into options.out at the end
    table: LiveTable
    held_out: HeldOut
    calibration: Callable  # ModelMetadata -> calibration batches (tmdeploy.export.precision)
    references: References  # PyTorch's outputs on the parity images, made for the first candidate
    protos: dict[str, onnx.ModelProto] = field(default_factory=dict)  # each built candidate's graph
    graphs: dict[tuple, onnx.ModelProto] = field(default_factory=dict)  # exported and lowered, shared
    sessions: dict[str, object] = field(default_factory=dict)  # one per candidate
    seen: dict[tuple, str] = field(default_factory=dict)  # (graph digest, how it runs) → the candidate

    def path(self, cand: Candidate) -> Path:
        return self.scratch / "candidates" / f"{cand.name}.onnx"

    def session(self, cand: Candidate):
        """The candidate's runtime's session (tmdeploy.runtimes), opened once; a TensorRT engine is built
        beside its file for every batch size it is given."""
        if cand.name not in self.sessions:
            batches = (*self.options.batches, *CheckOptions().batches)
            request = Request(self.options.threads, self.scratch / "candidates", batches, cand.name)
            self.sessions[cand.name] = cand.entry.open(cand.entry, self.protos[cand.name], request)
        return self.sessions[cand.name]

    def drop(self, cand: Candidate) -> None:
        """Forget a candidate's graph, session and file (it is another's twin)."""
        self.protos.pop(cand.name, None)
        if cand.name in self.sessions:
            self.sessions.pop(cand.name).close()
        self.path(cand).unlink(missing_ok=True)

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
