"""The candidates ``tmdeploy optimize`` tries on a target, and what is recorded about each.

A candidate is one ONNX file: a TM export form, an exporter, and a precision (with its INT8 recipe), and
the runtime that runs it (:data:`RUNTIMES`: on the CPU, onnxruntime or OpenVINO reading the same FP32 or FP16
file; on CUDA, onnxruntime's CUDA provider with IO binding or with its own CUDA graph, onnxruntime's TensorRT
provider, or a TensorRT engine built from the file). Each goes through the steps build → parity → accuracy →
profile; a step that cannot be taken is SKIPPED or FAILED with its reason, and the candidate is eligible only
when all of them are OK.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tmdeploy import onnxfile
from tmdeploy.export.options import DEFAULT_FORM
from tmdeploy.optimize.options import OptimizeOptions

STEPS = ("build", "parity", "accuracy", "profile")
OK, FAILED, SKIPPED = "OK", "FAILED", "SKIPPED"
# measured on an H100 (README, "On a GPU"): no QDQ pair was fused into an integer kernel
CUDA_INT8 = ("onnxruntime's CUDA provider runs QDQ convolutions in float (INT8 rounding at worse than FP32 speed, "
             "measured on an H100): INT8 on a GPU is TensorRT's job")


@dataclass(frozen=True)
class Runtime:
    """What runs a candidate's file, and the settings a deployment must use to get the speed measured."""

    name: str  # the --runtimes value
    suffix: str | None  # in candidate names
    provider: str | None  # onnxruntime's execution provider; None: not onnxruntime
    provider_options: dict = field(default_factory=dict)
    # onnxruntime's TensorRT provider: what CUDA, which runs the nodes TensorRT does not take, is set to
    cuda_fallback_options: dict | None = None
    int8: bool = True  # runs INT8 (QDQ) files
    int8_skipped: str = ""  # where it does not: listed SKIPPED with this reason (else left out)


_GRAPH = {**onnxfile.CUDA_FP32, "enable_cuda_graph": "1"}
RUNTIMES = {
    "cpu": {r.name: r for r in (
        Runtime("onnxruntime", None, onnxfile.CPU[0]),
        Runtime("openvino", "openvino", None, int8=False),
    )},
    "cuda": {r.name: r for r in (
        Runtime("onnxruntime", None, onnxfile.CUDA, onnxfile.CUDA_FP32, int8=False, int8_skipped=CUDA_INT8),
        Runtime("onnxruntime-cuda-graph", "cuda-graph", onnxfile.CUDA, _GRAPH, int8=False),
        # channels-last convolutions: the fastest onnxruntime configuration for rn26-tm on the H100
        # (benchmarks/gpu_tm_cost.py, folded-padded form)
        Runtime("onnxruntime-cuda-graph-nhwc", "cuda-graph-nhwc", onnxfile.CUDA, {**_GRAPH, "prefer_nhwc": "1"},
                int8=False),
        Runtime("onnxruntime-tensorrt", "ort-trt", onnxfile.TENSORRT, cuda_fallback_options=onnxfile.CUDA_FP32),
        Runtime("tensorrt", "trt", None),
    )},
}


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

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.step == name)

    def mark(self, name: str, status: str, reason: str = "", seconds: float = 0.0) -> None:
        step = self.step(name)
        step.status, step.reason, step.seconds = status, reason, seconds

    @property
    def status(self) -> str:
        """OK when every step is; else the first step's that is not."""
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
    """Every candidate ``options`` ask for on ``runtimes`` of ``options.target``, the default FP32 export first
    (it is the unit of the speed-ups). A runtime in ``missing`` (name → why) is listed SKIPPED with its
    reason, and so are the INT8 files of a runtime that runs INT8 badly (:data:`CUDA_INT8`)."""
    table = RUNTIMES[options.target]
    out = [_candidate(DEFAULT_FORM, "torchscript", "fp32", None, table["onnxruntime"], missing)]
    for runtime in map(table.get, runtimes):
        for exporter in options.exporters:
            for form in options.forms:
                for precision in options.precisions:
                    if precision == "int8" and not runtime.int8 and not runtime.int8_skipped:
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
    return Candidate(name, form, exporter, precision, recipe, runtime.name, runtime.provider,
                     dict(runtime.provider_options), fallback, skipped)
