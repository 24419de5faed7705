"""The candidates ``tmdeploy optimize`` tries on a CPU, and what is recorded about each.

A candidate is one ONNX file: a TM export form, an exporter, and a precision (with its INT8 recipe), and
the runtime that runs it (onnxruntime, or OpenVINO reading the same FP32 or FP16 file). Each goes through
the steps build → parity → accuracy → profile; a step that cannot be taken is SKIPPED or FAILED with its
reason, and the candidate is eligible only when all of them are OK.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tmdeploy.export.options import DEFAULT_FORM
from tmdeploy.optimize.options import OptimizeOptions

STEPS = ("build", "parity", "accuracy", "profile")
OK, FAILED, SKIPPED = "OK", "FAILED", "SKIPPED"


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

    def correct(self) -> bool:
        return all(self.step(s).status == OK for s in ("build", "parity", "accuracy"))

    @property
    def is_default(self) -> bool:
        """The default FP32 export, which every speed-up is measured against."""
        return (self.form, self.exporter, self.precision, self.runtime) == (DEFAULT_FORM, "torchscript", "fp32",
                                                                            "onnxruntime")


def candidates(options: OptimizeOptions, int8_recipes: tuple[str, ...], runtimes: tuple[str, ...]) -> list[Candidate]:
    """Every candidate ``options`` ask for on ``runtimes``, the default FP32 export first (it is the unit of
    the speed-ups). OpenVINO runs the FP32 and FP16 files; the INT8 recipes are onnxruntime's and TensorRT's."""
    out = [Candidate(f"{DEFAULT_FORM}-fp32", DEFAULT_FORM, "torchscript", "fp32")]
    for runtime in runtimes:
        for exporter in options.exporters:
            for form in options.forms:
                for precision in options.precisions:
                    if runtime == "openvino" and precision == "int8":
                        continue
                    for recipe in int8_recipes if precision == "int8" else (None,):
                        name = "-".join(filter(None, (form, precision, recipe,
                                                      None if exporter == "torchscript" else exporter,
                                                      None if runtime == "onnxruntime" else runtime)))
                        if name != out[0].name:
                            out.append(Candidate(name, form, exporter, precision, recipe, runtime))
    return out
