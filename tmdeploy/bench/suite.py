"""The benchmark: one checkpoint on every backend side by side — latency, throughput, accuracy.

``run(ckpt, BenchOptions(...))`` builds each backend (PyTorch eager, torch.compile, onnxruntime in FP32,
FP16 and INT8 with both quantization recipes, TensorRT where it is installed, a CUDA graph on GPUs),
times them in interleaved rounds under a time budget per batch size (:mod:`tmdeploy.bench.timing`), and
measures top-1 on a data set and agreement with PyTorch. A backend that cannot be built or fails while
running is reported with its error; the run goes on. Speed-ups are paired ratios to PyTorch eager.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from tmdeploy import data
from tmdeploy.bench import machine
from tmdeploy.bench.backends import BASELINE, Context, Skip, by_name, default_names, predict_all
from tmdeploy.bench.sessions import TorchSession
from tmdeploy.bench.timing import FAILED, OK, SKIPPED, error_line, latency_stats, measure, paired_ratio, wall_timer
from tmdeploy.bench.options import BenchOptions
from tmdeploy.checkpoint import Deployable, as_deployable
from tmdeploy.export.to_onnx import calibration_data
from tmdeploy.threads import torch_threads


@dataclass
class BackendResult:
    name: str
    label: str
    precision: str
    status: str = OK  # OK | FAILED | SKIPPED (tmdeploy.bench.timing)
    note: str = ""
    setup_s: float = 0.0  # building it: export, quantization, session or engine creation
    built: bool = False  # tells "could not build" from "built, then failed" when status is failed
    size_mb: float | None = None  # the artifact it runs: ONNX file, engine, or the module's weights
    latency: list[dict] = field(default_factory=list)  # per batch size: percentiles, throughput, speedup
    top1: float | None = None
    agreement: float | None = None  # share of images where its top-1 class is PyTorch eager's
    below_floor: list[str] = field(default_factory=list)  # the --min-top1/--min-agreement floors it missed
    outcome: str = ""  # passed | failed (built, then failed or below a floor) | not built | skipped

    def fail(self, note: str) -> None:
        self.status, self.note = FAILED, note


@dataclass
class BenchResult:
    model: dict
    machine: dict
    options: dict
    backends: list[BackendResult]
    data: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def backend(self, name: str) -> BackendResult:
        return next(b for b in self.backends if b.name == name)


def run(model, options: BenchOptions = BenchOptions()) -> BenchResult:
    """Benchmark ``model`` (a Deployable or a zoo checkpoint) as ``options`` say; see the module docstring."""
    options.validate()
    ckpt = as_deployable(model)
    from tmdeploy.bench.progress import Reporter

    spec = ckpt.card.training_data if isinstance(options.data, str) and options.data == "auto" else options.data
    spec = None if spec is None else data.as_source(spec)  # samples given in Python: stacked once
    if spec is not None:  # data unlike the model's fails here, before the long part
        calibration_data(ckpt, spec, option="--data")
    ctx = Context(ckpt, options.device, tuple(options.batches), calib_data=spec,
                  compile_backend=options.compile_backend, threads=options.threads)
    names = options.backends or default_names(options.device)
    results = [BackendResult(b.name, b.label, b.precision) for b in map(by_name, names)]
    test_set = held_out_images(ckpt, spec, options.seed, options.accuracy_limit) if spec else None
    with torch_threads(options.threads), Reporter(options.show_progress) as reporter:
        where = machine.describe(options.device, options.threads)
        sessions: dict = {}
        try:
            _build(ctx, results, sessions, reporter)
            for batch in options.batches:
                _time_batch(ctx, batch, sessions, results, options, reporter)
            accuracy = _accuracy(ctx, test_set, sessions, results, max(options.batches), reporter) if test_set else None
        finally:
            for session in sessions.values():
                session.close()
            ctx.close()
    judge(results, options)
    c, h, w = ckpt.card.input_size
    model = {"arch": ckpt.card.arch, "checkpoint": str(ckpt.path or ""), "sha256": ckpt.sha256 or "",
             "input_size": [c, h, w], "classes": ckpt.card.num_classes}
    return BenchResult(model, where, _options_dict(options), results, accuracy)


def _options_dict(options: BenchOptions) -> dict:
    out = asdict(replace(options, data=None if options.data is None else data.spec_text(options.data)))
    out.pop("show_progress")
    out["batches"] = list(options.batches)
    out["backends"] = list(options.backends) if options.backends else None
    return out


def _build(ctx: Context, results: list[BackendResult], sessions: dict, reporter) -> None:
    """Build each backend into ``sessions`` (filled as it goes, so the caller closes what was built)."""
    for i, result in enumerate(results):
        reporter.setup(result.label, i, len(results))
        start = time.perf_counter()
        backend = by_name(result.name)
        try:
            if backend.cuda_only and ctx.device != "cuda":
                raise Skip("needs --device cuda")
            sessions[result.name] = backend.build(ctx)
            result.note = getattr(sessions[result.name], "note", "")  # where it runs, when that is news
            result.built = True
            size = getattr(sessions[result.name], "artifact_bytes", None)
            result.size_mb = None if size is None else size / 1e6
        except Skip as note:
            result.status, result.note = SKIPPED, str(note)
        except Exception as err:  # noqa: BLE001 - one backend that cannot be built must not end the run
            result.fail(f"build failed: {error_line(err)}")
        result.setup_s = time.perf_counter() - start
    reporter.setup("", len(results), len(results))


def _inputs(ckpt: Deployable, batch: int, seed: int) -> np.ndarray:
    """Seeded normalized-scale inputs: speed does not depend on the values, only their shape."""
    return np.random.default_rng(seed).standard_normal((batch, *ckpt.card.input_size)).astype(np.float32)


def _time_batch(ctx: Context, batch: int, sessions: dict, results: list[BackendResult], options: BenchOptions,
                reporter) -> None:
    live = {r.name: r for r in results if r.status == OK}
    x = _inputs(ctx.ckpt, batch, options.seed)
    calls = {}
    for name, result in live.items():
        try:
            calls[name] = sessions[name].bind(x)
        except Exception as err:  # noqa: BLE001
            result.fail(f"batch {batch}: {error_line(err)}")
    timer = wall_timer
    if options.device == "cuda":
        from tmdeploy.bench.cuda import event_timer as timer
    progress = reporter.timing(batch, [live[n].label for n in calls])
    samples = measure(calls, options.budget(), timer, progress)
    progress("done", 1.0)
    for name, s in samples.items():
        if s.error:
            live[name].fail(f"batch {batch}: {s.error}")
            continue
        stats = {"batch": batch, **latency_stats(s.times, batch), "first_call_s": s.first_call}
        if BASELINE in samples and not samples[BASELINE].error:
            stats["speedup"] = paired_ratio(samples[BASELINE], s)
        live[name].latency.append(stats)


def cpu_reference_predictions(ckpt: Deployable, x: np.ndarray, chunk: int) -> np.ndarray:
    """PyTorch eager's top-1 on the CPU: what every backend's and candidate's agreement is measured against."""
    return predict_all(TorchSession(ckpt.copy_module(), "cpu"), x, min(chunk, len(x))).argmax(axis=1)


def held_out_images(ckpt: Deployable, spec: str, seed: int = 0,
                    limit: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Normalized test images of ``spec`` (at most ``limit``), their labels, and a description for the report;
    bench and optimize measure accuracy on exactly these."""
    c, h, _ = ckpt.card.input_size
    split = data.load(spec, image_size=h, in_chans=c, seed=seed)
    images, labels = data.stack(split.test, limit=limit)
    x = data.normalize(images, ckpt.card.mean, ckpt.card.std).numpy()
    return x, labels.numpy(), {"spec": data.spec_text(spec), "split": "test", "split_by": split.split_by,
                               "samples": int(len(labels))}


def _accuracy(ctx: Context, test_set, sessions: dict, results: list[BackendResult], chunk: int, reporter) -> dict:
    """Top-1 of every backend still standing, and how often its top-1 is PyTorch eager's on the CPU.

    On a GPU the reference stays on the CPU, so GPU eager (TF32 convolutions by default) is judged too.
    """
    x, labels, description = test_set
    live = [r for r in results if r.status == OK]
    predictions = {}
    for i, result in enumerate(live):
        reporter.accuracy(result.label, i, len(live))
        try:
            predictions[result.name] = predict_all(sessions[result.name], x, chunk).argmax(axis=1)
        except Exception as err:  # noqa: BLE001
            result.fail(f"accuracy: {error_line(err)}")
            continue
        result.top1 = float((predictions[result.name] == labels).mean())
    reporter.accuracy("", len(live), len(live))
    reference = predictions.get(BASELINE)
    if ctx.device != "cpu":
        reference = cpu_reference_predictions(ctx.ckpt, x, chunk)
    description["agreement_with"] = "PyTorch eager on the CPU"
    for result in live:
        if reference is not None and result.name in predictions:
            result.agreement = float((predictions[result.name] == reference).mean())
    return description


def judge(results: list[BackendResult], options: BenchOptions) -> None:
    """Each backend's outcome, as Ultralytics' table shows it; a floor judges only backends that ran."""
    floors = [("top-1", "top1", options.min_top1), ("agreement", "agreement", options.min_agreement)]
    for r in results:
        if r.status == OK:
            r.below_floor = [f"{what} {getattr(r, key):.2%} < {floor:.2%}" for what, key, floor in floors
                             if floor is not None and getattr(r, key) is not None and getattr(r, key) < floor]
        r.outcome = ("skipped" if r.status == SKIPPED else "not built" if not r.built
                     else "failed" if r.status == FAILED or r.below_floor else "passed")


def floor_failures(result: BenchResult) -> list[str]:
    """One phrase per backend that does not pass when floors are set (a CI gate's reasons), else none."""
    options = result.options
    if options.get("min_top1") is None and options.get("min_agreement") is None:
        return []
    return [f"{b.name} ({'; '.join(b.below_floor) or b.outcome})" for b in result.backends
            if b.outcome in ("failed", "not built")]
