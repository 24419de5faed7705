"""The candidates ``tmdeploy optimize`` tries on a device, and what is recorded about each.

A candidate is one ONNX file: a TM export form, an exporter, and a precision (with its INT8 recipe), and
the runtime that runs it (:mod:`tmdeploy.runtimes`: on the CPU, onnxruntime or another runtime reading the
same file; on CUDA, onnxruntime's CUDA provider with IO binding or with its own CUDA graph, onnxruntime's
TensorRT provider, or a TensorRT engine built from the file). Each goes through the steps build → parity → accuracy →
profile; a step that cannot be taken is SKIPPED or FAILED with its reason, and the candidate is eligible only
when all of them are OK.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tmdeploy import onnxfile
from tmdeploy.bench.timing import FAILED, OK, SKIPPED  # noqa: F401 (bench's words: the steps' statuses)
from tmdeploy.export.options import DEFAULT_FORM
from tmdeploy.optimize.options import OptimizeOptions
from tmdeploy.runtimes import RUNTIMES, Runtime

STEPS = ("build", "parity", "accuracy", "profile")


@dataclass
class Step:
    step: str
    status: str = SKIPPED
    reason: str = "not reached"
    seconds: float = 0.0


@dataclass
class Candidate:
    name: str
    form: str
    exporter: str
    precision: str
    int8_recipe: str | None = None
    runtime: str = "onnxruntime"
    device: str = "cpu"  # where its runtime runs it: the runtime's entry is RUNTIMES[device][runtime]
    provider: str | None = onnxfile.CPU[0]  # onnxruntime's execution provider; None: another runtime
    provider_options: dict = field(default_factory=dict)  # what a deployment sets to run it as timed
    cuda_fallback_options: dict | None = None  # with onnxruntime's TensorRT provider: CUDA's, for the rest
    skipped: str = ""  # why it is not tried here (its runtime is missing, or cannot run it well)
    steps: list[Step] = field(default_factory=lambda: [Step(s) for s in STEPS])
    size_mb: float | None = None
    build_s: float | None = None
    tolerance: dict | None = None  # the parity tolerance it was held to
    errors: dict | None = None  # parity statistics of its logits (max/mean/p99 abs and rel, cosine, agreement)
    accuracy: dict | None = None  # top-1, agreement with PyTorch and top-1 drop on the held-out split
    latency: list[dict] = field(default_factory=list)  # per batch size
    reproduce: dict | None = None  # the command that re-checks its parity (polygraphy's, where it can)

    @property
    def entry(self) -> Runtime:
        return RUNTIMES[self.device][self.runtime]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.step == name)

    def mark(self, name: str, status: str, reason: str = "", seconds: float = 0.0) -> None:
        step = self.step(name)
        step.status, step.reason, step.seconds = status, reason, seconds

    @property
    def status(self) -> str:
        """ok when every step is; else the first step's that is not."""
        return next((s.status for s in self.steps if s.status != OK), OK)

    @property
    def reason(self) -> str:
        return next((f"{s.step}: {s.reason}" for s in self.steps if s.status != OK), "")

    def onnxruntime_providers(self) -> list | None:
        """The ``providers`` list a deployment passes to ``onnxruntime.InferenceSession`` to run this candidate
        as timed, fallbacks included; None when another runtime runs it."""
        if self.provider is None:
            return None
        if self.provider == onnxfile.CPU[0]:
            return [[self.provider, dict(self.provider_options)]]
        cuda = [] if self.cuda_fallback_options is None else [[onnxfile.CUDA, dict(self.cuda_fallback_options)]]
        return [[self.provider, dict(self.provider_options)], *cuda, [onnxfile.CPU[0], {}]]

    def correct(self) -> bool:
        return all(self.step(s).status == OK for s in ("build", "parity", "accuracy"))

    @property
    def is_default(self) -> bool:
        """The default FP32 export on the target's plain onnxruntime, which every speed-up is measured against."""
        return (self.form, self.exporter, self.precision, self.runtime) == (DEFAULT_FORM, "torchscript", "fp32",
                                                                            "onnxruntime")


def candidates(options: OptimizeOptions, int8_recipes: tuple[str, ...], runtimes: tuple[str, ...],
               missing: dict[str, str] | None = None) -> list[Candidate]:
    """Every candidate ``options`` ask for on ``runtimes`` of ``options.device``, the default FP32 export first
    (it is the unit of the speed-ups). A runtime in ``missing`` (name → why) is listed SKIPPED with its
    reason, and so are the INT8 files of a runtime that runs INT8 badly (its ``int8_skipped``)."""
    table = RUNTIMES[options.device]
    out = [_candidate(DEFAULT_FORM, "torchscript", "fp32", None, table["onnxruntime"], missing)]
    for runtime in map(table.get, runtimes):
        for exporter in options.exporters:
            for form in options.forms:
                for precision in options.precisions:
                    if precision not in runtime.precisions and not (precision == "int8" and runtime.int8_skipped):
                        continue
                    for recipe in int8_recipes if precision == "int8" else (None,):
                        cand = _candidate(form, exporter, precision, recipe, runtime, missing)
                        if cand.name != out[0].name:
                            out.append(cand)
    return out


def _candidate(form: str, exporter: str, precision: str, recipe: str | None, runtime: Runtime,
               missing: dict[str, str] | None) -> Candidate:
    name = "-".join(filter(None, (form, precision, recipe, None if exporter == "torchscript" else exporter,
                                  runtime.suffix)))
    skipped = (missing or {}).get(runtime.name) or (runtime.int8_skipped if precision == "int8" else "")
    fallback = None if runtime.cuda_fallback_options is None else dict(runtime.cuda_fallback_options)
    return Candidate(name, form, exporter, precision, recipe, runtime.name, runtime.device, runtime.provider,
                     dict(runtime.provider_options), fallback, skipped)
