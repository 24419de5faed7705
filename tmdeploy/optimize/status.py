"""``status.json``: one typed record of an optimize run (:class:`Status`), written by the run and read back
by the report stage, so its fields are named once, here.

Torch-free, and read tolerantly: a field an older file lacks takes its default, a top-level field this
version does not know is kept aside (a candidate's is dropped), so a report can be rendered from any
status.json written since format 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

STATUS_FORMAT = "1"


@dataclass
class CandidateRecord:
    """One candidate as status.json holds it (tmdeploy.optimize.candidates.Candidate, flattened)."""

    name: str
    form: str = ""
    exporter: str = "torchscript"
    precision: str = "fp32"
    int8_recipe: str | None = None
    runtime: str = "onnxruntime"
    device: str = "cpu"
    provider: str | None = None
    provider_options: dict = field(default_factory=dict)
    onnxruntime_providers: list | None = None  # the whole providers= list a deployment passes
    status: str = "skipped"  # ok | failed | skipped (upper case in files of earlier versions)
    reason: str = ""
    default_export: bool = False
    size_mb: float | None = None
    build_s: float | None = None
    steps: list[dict] = field(default_factory=list)  # step, status, reason, seconds
    tolerance: dict | None = None
    errors: dict | None = None
    accuracy: dict | None = None
    latency: list[dict] = field(default_factory=list)  # per batch size
    reproduce: dict | None = None

    @classmethod
    def of(cls, cand) -> "CandidateRecord":
        """The record of a Candidate: its own fields, its steps, and what is derived from them."""
        own = {f.name: getattr(cand, f.name) for f in fields(cls) if hasattr(cand, f.name) and f.name != "steps"}
        return cls(**{**own, "steps": [asdict(s) for s in cand.steps], "status": cand.status, "reason": cand.reason,
                      "onnxruntime_providers": cand.onnxruntime_providers(), "default_export": cand.is_default})

    @property
    def passed(self) -> bool:
        return self.status.lower() == "ok"

    def stat(self, batch: int) -> dict | None:
        """Its latency record at ``batch``; None where it was not timed there."""
        return next((s for s in self.latency if s["batch"] == batch), None)


@dataclass
class Status:
    model: dict  # arch, checkpoint, sha256, input_size, classes
    environment: dict  # the machine and library versions (tmdeploy.bench.machine.describe and more)
    options: dict  # OptimizeOptions as run (effective), the INT8 recipes tried
    data: dict  # the held-out split: spec, split, samples
    candidates: list[CandidateRecord]
    profile: list[dict]  # per batch size: windows, stable, last change, screened out
    decision: dict | None  # the choice, and how a deployment runs it as measured; None: none passed
    format: str = STATUS_FORMAT
    extra: dict = field(default_factory=dict)  # fields of a newer file, kept as they were

    @property
    def passed(self) -> bool:
        return self.decision is not None

    def to_dict(self) -> dict:
        out = {"format": self.format, **{f.name: getattr(self, f.name) for f in fields(self)
                                         if f.name not in ("format", "extra", "candidates")}}
        out["candidates"] = [asdict(c) for c in self.candidates]
        out["passed"] = self.passed
        order = ("format", "model", "environment", "options", "data", "candidates", "profile", "decision", "passed")
        return {**{k: out[k] for k in order}, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "Status":
        known = {f.name for f in fields(CandidateRecord)}
        candidates = [CandidateRecord(**{k: v for k, v in c.items() if k in known}) for c in d.get("candidates", [])]
        mine = {f.name for f in fields(cls)} | {"passed"}
        return cls(model=d["model"], environment=d.get("environment", {}), options=d["options"],
                   data=d.get("data", {}), candidates=candidates, profile=d.get("profile", []),
                   decision=d.get("decision"), format=d.get("format", STATUS_FORMAT),
                   extra={k: v for k, v in d.items() if k not in mine})
