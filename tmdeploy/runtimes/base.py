"""What one runtime entry says about itself (:class:`Runtime`), and what a stage gives it to open a session.

Torch-free and polygraphy-free: the CLI's choices and the option checks read these entries. What needs a
heavy library (a session, a polygraphy runner) is a function of the entry's module that imports it on use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Request:
    """What the stage opening a session knows: the ONNX runtimes' CPU threads, a scratch folder for
    files a runtime builds (TensorRT engines), every batch size it will be given, and a name for its files."""

    threads: int | None = None
    workdir: Path | None = None
    batches: tuple[int, ...] = (1,)
    name: str = "model"


@dataclass(frozen=True)
class Runtime:
    """One runtime on one device: ``optimize --runtimes``' value, ``check --runtime``'s where it has a runner."""

    name: str
    device: str  # "cpu" or "cuda": where it runs the file
    label: str  # in tables, reports and errors
    precisions: tuple[str, ...]  # the files it runs well (int8: QDQ graphs)
    # opens the session the bench stage times: (entry, onnx.ModelProto, Request) -> a bench Session
    open: Callable
    # the polygraphy runner ``check`` judges a file with: (entry, onnx path, CheckOptions) -> runner; None: the
    # stage wraps the timed session (tmdeploy.verify.runners.SessionRunner)
    runner: Callable | None = None
    # the line, run in optimize's output folder, that re-checks a candidate's parity: (entry, Line) -> dict
    reproduce: Callable | None = None
    # why it cannot run on this machine, with its install line; None: it can (called only when asked)
    probe: Callable[[], str | None] = lambda: None
    version: Callable[[], str | None] | None = None  # recorded in bench.json and status.json; None: not recorded
    suffix: str | None = None  # in optimize's candidate names; None: the plain onnxruntime, the default
    provider: str | None = None  # onnxruntime's execution provider; None: not onnxruntime
    provider_options: dict = field(default_factory=dict)
    cuda_fallback_options: dict | None = None  # onnxruntime's TensorRT provider: CUDA's, for the nodes it leaves
    int8_skipped: str = ""  # INT8 files it runs badly: listed SKIPPED with this reason ("": left out, or run)
    missing: str = "drop"  # where its probe fails: "drop" it from optimize's defaults, or "skip" (listed SKIPPED)
    check: bool = False  # a ``check --runtime`` choice (it has a runner of its own file)
    bench: tuple[str, ...] = ()  # the precisions ``bench`` has a backend for, named ``{bench_prefix}-{precision}``
    bench_prefix: str = ""
    bench_int8_recipe: str | None = None  # whose INT8 recipe its bench INT8 file uses


@dataclass(frozen=True)
class Line:
    """What a reproduction line needs: the candidate's files, the checkpoint and data, the tolerances."""

    name: str  # the candidate: candidates/{name}.onnx (and .plan) in the output folder
    checkpoint: str
    data: str
    seed: int
    loads: str  # polygraphy's --load-inputs/--load-outputs and tolerance flags
    atol: float
    rtol: float
    what: str  # which tolerances, in words
    provider_options: dict = field(default_factory=dict)
