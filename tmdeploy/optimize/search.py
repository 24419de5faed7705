"""``tmdeploy optimize``: the fastest deployment that keeps accuracy, chosen by measurement.

``optimize(ckpt, OptimizeOptions(...))`` builds every candidate (:mod:`.candidates`) with the export stage,
checks its parity against PyTorch with the verify stage (polygraphy's Comparator, at the precision's
tolerances, on held-out images, run by the candidate's runtime), measures top-1 and agreement on the whole
held-out split, times the correct ones side by side with the bench stage's interleaved timing in windows
until two agree (slow ones screened out after the first; on CUDA with CUDA events), and picks the best by the
strategy. On CUDA the sessions are the bench stage's (:mod:`tmdeploy.bench.cuda`). It writes the
choice as ``model.onnx`` and every record as ``status.json`` into the output folder; the report stage renders that
file (``report.md``, the plot). All files are made in scratch space first and copied into the folder, each
atomically, only when the run has finished, so a run that fails or is interrupted changes no file there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from polygraphy.common import TensorMetadata

from tmdeploy import __version__, data, onnxfile
from tmdeploy.bench import machine
from tmdeploy.bench.backends import predict_all
from tmdeploy.bench.suite import cpu_reference_predictions, held_out_images
from tmdeploy.bench.timing import Budget, Samples, error_line, latency_stats, measure, paired_ratio, wall_timer
from tmdeploy.checkpoint import Deployable, as_deployable
from tmdeploy.errors import UsageError
from tmdeploy.export import ExportOptions, to_model_proto
from tmdeploy.export.metadata import ModelMetadata, props
from tmdeploy.export.options import FORMS
from tmdeploy.export.precision import INT8_RECIPES, calibration_loader, lower_precision
from tmdeploy.export.to_onnx import INPUT_NAME, calibration_data
from tmdeploy.fileio import atomic_write, check_output_dir, json_text
from tmdeploy.optimize.candidates import FAILED, OK, SKIPPED, Candidate, candidates
from tmdeploy.optimize.options import OUTPUT_FILES, OptimizeOptions
from tmdeploy.optimize.progress import LiveTable
from tmdeploy.runtimes import RUNTIMES, Line, Request
from tmdeploy.runtimes.onnxruntime import plain
from tmdeploy.threads import torch_threads
from tmdeploy.verify.options import CheckOptions
from tmdeploy.verify.parity import References, check
from tmdeploy.verify.runners import SessionRunner

STATUS_FORMAT = "1"
CHOICE_KEY = "tmdeploy_optimize"  # the metadata entry of model.onnx naming the choice
REPRO = ("repro/inputs.json", "repro/reference.json")  # polygraphy's --load-inputs / --load-outputs files
GPU_INT8 = (("tensorrt",), "on a GPU INT8 is TensorRT's: its recipe, for its engine and onnxruntime's "
                           "TensorRT provider")
log = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    out: Path
    status: dict  # what status.json holds
    passed: bool  # a candidate passed every step: the exit status is 0

    @property
    def choice(self) -> str | None:
        return (self.status["decision"] or {}).get("chosen")


def default_out(ckpt: Deployable) -> Path:
    if ckpt.path is None:
        raise UsageError("no output folder: pass --out")
    return ckpt.path.with_name(f"{ckpt.path.stem}-optimized")


def optimize(model, options: OptimizeOptions = OptimizeOptions()) -> OptimizeResult:
    """Try, check, time and choose as the module docstring says for ``model`` (a Deployable or a zoo
    checkpoint); returns what was written where."""
    options = options.effective()
    options.validate()
    ckpt = as_deployable(model)
    out = Path(options.out) if options.out is not None else default_out(ckpt)
    options = replace(options, out=out)
    check_output_dir(out, OUTPUT_FILES.values(), ckpt.path, option="--out")  # the checkpoint too, now known
    given = None if isinstance(options.data, str) and options.data == "auto" else data.as_source(options.data)
    spec = calibration_data(ckpt, given, option="--data")
    picked, why = machine.int8_recipes() if options.device == "cpu" else GPU_INT8
    recipes = options.int8_recipes or tuple(dict.fromkeys((*picked, "tensorrt")))
    installed, missing = _runtimes(options.device)
    options = replace(options, forms=options.forms or FORMS, runtimes=options.runtimes or installed)
    todo = candidates(options, recipes, options.runtimes, missing)
    with tempfile.TemporaryDirectory(prefix="tmdeploy-optimize-") as scratch, \
            torch_threads(options.threads), LiveTable(todo, options.show_progress) as table:
        scratch = Path(scratch)
        test_set = held_out_images(ckpt, spec, options.seed, options.accuracy_limit)
        reference = cpu_reference_predictions(ckpt, test_set[0], max(options.batches))
        protos: dict[str, onnx.ModelProto] = {}  # each built candidate's graph, by name
        graphs: dict[tuple, onnx.ModelProto] = {}  # exported and lowered graphs, shared between runtimes
        sessions: dict[str, object] = {}  # one session per candidate, for its build, accuracy and timing
        calibration = calibration_loader(spec)
        references = References(ckpt)  # PyTorch's outputs on the parity images, computed for the first candidate
        seen: dict[tuple, str] = {}  # (graph digest, how it runs) → the candidate that has it
        try:
            for cand in todo:
                _build(ckpt, cand, calibration, options, scratch, protos, graphs, sessions, table)
                _skip_if_seen(cand, protos, seen, sessions, scratch, table)
                _parity(ckpt, cand, spec, options, scratch, sessions, references, table)
                _accuracy(cand, protos, sessions, test_set, reference, options, scratch, table)
            profile = _profile(ckpt, todo, protos, sessions, options, scratch, table)
        finally:
            for session in sessions.values():
                session.close()
        decision = _decide(todo, options)
        status = _status(ckpt, options, todo, profile, decision, test_set[2], recipes, (picked, why))
        files = _stage_files(scratch, status, protos, decision)
        _commit(scratch, out, files, ckpt.path)
    return OptimizeResult(out, status, decision is not None)


def _runtimes(target: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The runtimes tried by default on ``target``, and those listed SKIPPED, with why: each runtime whose
    probe passes; one whose probe fails is left out, or listed SKIPPED where its entry says so
    (tmdeploy's TensorRT engine, where the tensorrt module does not import)."""
    names, missing = [], {}
    for runtime in RUNTIMES[target].values():
        reason = runtime.probe()
        if reason and runtime.missing == "drop":
            continue
        names.append(runtime.name)
        if reason:
            missing[runtime.name] = reason
    return tuple(names), missing


def _session(cand: Candidate, proto: onnx.ModelProto, options: OptimizeOptions, scratch: Path, sessions: dict):
    """The bench stage's session for the candidate's runtime and provider settings, made once, so parity (where
    polygraphy cannot run it), accuracy and timing run what ships."""
    if cand.name not in sessions:
        # a TensorRT engine beside the candidate's file, for every batch size it is given
        request = Request(options.threads, scratch / "candidates", (*options.batches, *CheckOptions().batches),
                          cand.name)
        sessions[cand.name] = cand.entry.open(cand.entry, proto, request)
    return sessions[cand.name]


class _Quiet:
    """onnxruntime.quantization's advice lines (logged on the root logger) once per INT8 candidate: noise."""

    def __enter__(self):
        self.level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.root.setLevel(self.level)


def _build(ckpt, cand: Candidate, calibration, options: OptimizeOptions, scratch: Path, protos: dict, graphs: dict,
           sessions: dict, table) -> None:
    if cand.skipped:
        cand.mark("build", SKIPPED, cand.skipped)
        return table.update(cand)
    table.update(cand, "build")
    start = time.perf_counter()
    try:
        fp32_key = (cand.form, cand.exporter, "fp32", None)
        if fp32_key not in graphs:
            graphs[fp32_key] = to_model_proto(ckpt, ExportOptions(tm_form=cand.form, exporter=cand.exporter))
        key = (cand.form, cand.exporter, cand.precision, cand.int8_recipe)
        if key not in graphs:  # an FP16 graph serves every runtime alike: lowered once
            fp32 = graphs[fp32_key]
            meta = ModelMetadata.from_props(props(fp32))
            with _Quiet():
                graphs[key] = lower_precision(fp32, cand.precision, meta=meta, calibration=calibration(meta),
                                              show_progress=False,
                                              int8_recipe=INT8_RECIPES[cand.int8_recipe] if cand.int8_recipe else None)
        proto = graphs[key]
        path = scratch / "candidates" / f"{cand.name}.onnx"
        path.parent.mkdir(exist_ok=True)
        onnx.save(proto, str(path))
        if cand.provider != onnxfile.CPU[0]:  # its build is the runtime's compile, the CUDA session, the engine too
            _session(cand, proto, options, scratch, sessions)
    except Exception as err:  # noqa: BLE001 - a candidate that cannot be built is a record, not the end
        cand.mark("build", FAILED, error_line(err), time.perf_counter() - start)
        table.update(cand)
        return
    protos[cand.name] = proto
    cand.build_s = time.perf_counter() - start
    cand.size_mb = (sessions[cand.name].artifact_bytes if cand.runtime == "tensorrt" else path.stat().st_size) / 1e6
    cand.mark("build", OK, "", cand.build_s)


def _skip_if_seen(cand: Candidate, protos: dict, seen: dict, sessions: dict, scratch: Path, table) -> None:
    """A candidate whose graph is byte for byte one already built for the same runtime and settings is not
    checked or timed again (a network without template-matching blocks has one graph for every form)."""
    if cand.step("build").status != OK:
        return
    digest = hashlib.sha256(protos[cand.name].graph.SerializeToString(deterministic=True)).hexdigest()
    key = (digest, cand.runtime, cand.provider, json.dumps(cand.provider_options, sort_keys=True))
    if key not in seen:
        seen[key] = cand.name
        return
    cand.mark("build", SKIPPED, f"the same graph as {seen[key]}")
    del protos[cand.name]
    if cand.name in sessions:
        sessions.pop(cand.name).close()
    (scratch / "candidates" / f"{cand.name}.onnx").unlink(missing_ok=True)
    table.update(cand)


def _parity(ckpt, cand: Candidate, spec: str, options: OptimizeOptions, scratch: Path, sessions: dict,
            references: References, table) -> None:
    if cand.step("build").status != OK:
        return cand.mark("parity", SKIPPED, "not built")
    table.update(cand, "parity")
    start = time.perf_counter()
    inputs, reference = (scratch / name for name in REPRO)
    first = not reference.exists()  # the inputs and PyTorch's outputs are the same for every candidate
    # held-out images, not random tensors: INT8 scales are calibrated for images, and on N(0, 1) noise
    # rn26-tm's INT8 graphs agreed with PyTorch on 81% of inputs while agreeing on 100% of digits test images
    on_cuda = options.device == "cuda"
    check_options = CheckOptions(data=spec, seed=options.seed, atol=options.atol, rtol=options.rtol,
                                 save_inputs=inputs if first else None, save_outputs=reference if first else None,
                                 runtime=cand.runtime if cand.entry.runner else "onnxruntime",
                                 device=options.device, cuda_options=plain(cand.provider_options) if on_cuda else None,
                                 tensorrt_int8_arithmetic=False)  # judged as it is timed: onnxruntime's kernels
    path = scratch / "candidates" / f"{cand.name}.onnx"
    runner = None
    # a runtime without a runner of its own (TensorRT, onnxruntime's TensorRT provider): the session that is
    # timed, built once in the build step
    if cand.entry.runner is None:
        c, h, w = ckpt.card.input_size
        runner = SessionRunner(sessions[cand.name], TensorMetadata().add(INPUT_NAME, np.float32, (-1, c, h, w)),
                               "logits", name=cand.runtime)
    try:
        report = check(ckpt, path, check_options, runner, references)
    except Exception as err:  # noqa: BLE001
        cand.mark("parity", FAILED, error_line(err), time.perf_counter() - start)
        return table.update(cand)
    stats = report.outputs["logits"]
    cand.tolerance, cand.errors = report.tolerance, {k: v for k, v in stats.items() if k != "passed"}
    cand.reproduce = _reproduce_command(ckpt, cand, check_options, report.tolerance, stats)
    reason = "" if report.passed else _parity_reason(report.tolerance, stats)
    cand.mark("parity", OK if report.passed else FAILED, reason, time.perf_counter() - start)
    table.update(cand)


def _parity_reason(tol: dict, stats: dict) -> str:
    if not stats["finite"]:
        return "the outputs hold NaN or Inf"
    if not stats["elementwise_passed"]:
        return (f"max abs error {stats['max_abs_error']:.3g} beyond atol {tol['atol']:g} "
                f"(max rel error {stats['max_rel_error']:.3g}, rtol {tol['rtol']:g})")
    return f"top-1 agreement {stats['top1_agreement']:.2%} < {tol['min_top1']:.2%}"


def _reproduce_command(ckpt, cand: Candidate, check_options: CheckOptions, tol: dict, stats: dict) -> dict:
    """The CLI line, run in the output folder, that re-checks this file's logits against PyTorch's: polygraphy's
    own, without tmdeploy, where polygraphy runs the runtime; else ``tmdeploy check --runtime`` (the entry's).

    FP32/FP16 use the precision's tolerances. INT8 is judged by top-1 agreement, which polygraphy does not
    check: its line bounds the errors at the measured maximum instead, a regression check.
    """
    if tol["elementwise"]:
        atol, rtol, what = tol["atol"], tol["rtol"], "the precision's tolerances"
    else:
        atol, rtol = float(f"{stats['max_abs_error'] * 1.01 + 1e-6:.3g}"), 0.0
        what = "the measured max abs error (INT8 is judged by top-1 agreement, which polygraphy does not check)"
    loads = f"--load-inputs {REPRO[0]} --load-outputs {REPRO[1]} --atol {atol:g} --rtol {rtol:g}"
    line = Line(cand.name, str(ckpt.path or "CHECKPOINT"), data.spec_text(check_options.data), check_options.seed,
                loads, atol, rtol, what, cand.provider_options)
    return cand.entry.reproduce(cand.entry, line)


def _accuracy(cand: Candidate, protos: dict, sessions: dict, test_set, reference: np.ndarray,
              options: OptimizeOptions, scratch: Path, table) -> None:
    if cand.step("build").status != OK:
        return cand.mark("accuracy", SKIPPED, "not built")
    table.update(cand, "accuracy")
    start = time.perf_counter()
    x, labels, _ = test_set
    try:
        predicted = predict_all(_session(cand, protos[cand.name], options, scratch, sessions), x,
                                min(max(options.batches), len(x))).argmax(axis=1)
    except Exception as err:  # noqa: BLE001
        cand.mark("accuracy", FAILED, error_line(err), time.perf_counter() - start)
        return table.update(cand)
    top1, ref_top1 = float((predicted == labels).mean()), float((reference == labels).mean())
    agreement = float((predicted == reference).mean())
    drop = (ref_top1 - top1) * 100
    cand.accuracy = {"top1": top1, "agreement": agreement, "top1_drop_points": drop, "reference_top1": ref_top1}
    misses = []
    if drop > options.max_top1_drop:
        misses.append(f"top-1 drop {drop:.2f} points > {options.max_top1_drop:g} "
                      f"(by {drop - options.max_top1_drop:.2f})")
    if agreement < options.min_agreement:
        misses.append(f"agreement {agreement:.2%} < {options.min_agreement:.2%} "
                      f"(by {(options.min_agreement - agreement) * 100:.2f} points)")
    if options.min_top1 is not None and top1 < options.min_top1:
        misses.append(f"top-1 {top1:.2%} < {options.min_top1:.2%} (by {(options.min_top1 - top1) * 100:.2f} points)")
    cand.mark("accuracy", FAILED if misses else OK, "; ".join(misses), time.perf_counter() - start)
    table.update(cand)


def _profile(ckpt, todo: list[Candidate], protos: dict, built: dict, options: OptimizeOptions, scratch: Path,
             table) -> list[dict]:
    """Time the correct candidates (and the default export, the unit of the speed-ups) side by side, per
    batch size, in windows until two in a row agree within ``stable_within`` or the budget ends."""
    timed = [c for c in todo if c.correct()]
    if timed:  # the default export is the unit of the speed-ups even when it is not correct itself
        timed = [c for c in todo if c in timed or (c.is_default and c.step("build").status == OK)]
    for cand in todo:
        if cand not in timed:
            cand.mark("profile", SKIPPED, "not correct: not timed")
    for cand in timed:  # _session keeps each one it opens in ``built``
        try:
            _session(cand, protos[cand.name], options, scratch, built)
        except Exception as err:  # noqa: BLE001
            cand.mark("profile", FAILED, error_line(err))
    records = []
    per_batch = options.profile_s / len(options.batches)
    for batch in options.batches:
        x = np.random.default_rng(options.seed).standard_normal((batch, *ckpt.card.input_size)).astype(np.float32)
        calls = {}
        for cand in timed:
            if cand.name in built and cand.step("profile").status != FAILED:
                try:
                    calls[cand.name] = built[cand.name].bind(x)
                except Exception as err:  # noqa: BLE001 - an engine without this batch size, say
                    cand.mark("profile", FAILED, f"batch {batch}: {error_line(err)}")
        live = [c for c in timed if c.name in calls]
        records.append(_stable_windows(calls, batch, per_batch, options, live, table))
    for cand in timed:
        if cand.step("profile").status != FAILED:
            cand.mark("profile", OK, "", 0.0)
    return records


def _stable_windows(calls: dict, batch: int, budget_s: float, options: OptimizeOptions, live: list[Candidate],
                    table) -> dict:
    budget = Budget(min_time=options.window_s, min_iterations=5, min_rounds=3, warmup=2)
    # the first window screens every candidate, each beside the default export: short chunks and a quarter of
    # the time tell who is far behind (with 28 candidates a full window took the whole budget); the windows
    # that settle the ranking are spent on the contenders
    screening = Budget(min_time=options.window_s / 4, min_iterations=3, min_rounds=3, warmup=2, chunk_time=0.03)
    timer = wall_timer
    if options.device == "cuda":  # GPU time, as `bench --device cuda` measures it
        from tmdeploy.bench.cuda import event_timer as timer
    start = time.perf_counter()
    windows: list[dict[str, Samples]] = []
    change = None
    default = next((c.name for c in live if c.is_default), None)
    screened: dict[str, Samples] = {}  # left out of later windows: their first window is their record
    while calls:
        table.status(f"timing batch {batch}: window {len(windows) + 1}, {len(calls)} candidates")
        # the default export, the unit of every speed-up, timed beside each candidate: with dozens of candidates
        # a round is long, and a 2-core VM's speed drifts within one
        windows.append(measure(calls, budget if windows else screening, timer, deadline=start + budget_s,
                               anchor=default))
        for name, s in windows[-1].items():
            if s.error:
                next(c for c in live if c.name == name).mark("profile", FAILED, f"batch {batch}: {s.error}")
                calls.pop(name)
        if len(windows) == 1 and calls:
            for name in _screen(windows[0], calls, default, options.screen_slower):
                screened[name] = windows[0][name]
                calls.pop(name)
        if len(windows) >= 2:
            # agreement on what the choice rests on: the latest leader led the window before too (or tied with
            # its leader within stable_within), and its speed moved less than stable_within
            before, last = (_speeds(w, calls, default) for w in windows[-2:])
            leader = max(last, key=last.get)
            tied = before[leader] >= (1 - options.stable_within) * max(before.values())
            change = abs(last[leader] / before[leader] - 1) if tied else None
            if change is not None and change <= options.stable_within:
                break
        if time.perf_counter() - start >= budget_s:
            break
    stable = change is not None and change <= options.stable_within
    pooled = {n: _pool([w[n] for w in windows[-2:]]) for n in calls}
    pooled.update(screened)
    default = default if default in pooled else None
    for cand in live:
        if cand.name not in pooled:
            continue
        s = pooled[cand.name]
        stats = {"batch": batch, **latency_stats(s.times, batch)}
        unit = windows[0][default] if cand.name in screened and default else pooled.get(default)
        stats["speedup_vs_default"] = paired_ratio(unit, s) if default else None  # rounds of the same windows
        stats["first_window_only"] = cand.name in screened
        cand.latency.append(stats)
        table.update(cand)
    return {"batch": batch, "windows": len(windows), "stable": stable, "last_change": change,
            "screened_out": sorted(screened), "screen_slower": options.screen_slower,
            "compared": ("the fastest candidate's speed-up over the default export" if default
                         else "the fastest candidate's median latency"),
            "stable_within": options.stable_within, "seconds": time.perf_counter() - start,
            "ended_by": "two windows agreed" if stable else "time budget"}


def _screen(window: dict[str, Samples], calls: dict, default: str | None, slower: float) -> list[str]:
    """Candidates more than ``slower`` times slower than the fastest in the first window: the windows that
    follow, which settle the ranking, are spent on the contenders (the default export stays, as the unit)."""
    medians = {n: statistics.median(window[n].times) for n in calls}
    best = min(medians.values())
    return [n for n, m in medians.items() if m > slower * best and n != default]


def _speeds(window: dict[str, Samples], calls: dict, default: str | None) -> dict[str, float]:
    """What two windows must agree on: each candidate's paired speed-up over the default export (a slow
    minute on a shared machine moves both sides alike), or 1 / its median latency when that was not timed."""
    if default in calls:
        return {n: paired_ratio(window[default], window[n]) for n in calls}
    return {n: 1.0 / statistics.median(window[n].times) for n in calls}


def _pool(samples: list[Samples]) -> Samples:
    return Samples(times=[t for s in samples for t in s.times],
                   round_medians=[m for s in samples for m in s.round_medians],
                   anchor_medians=[m for s in samples for m in s.anchor_medians],
                   is_anchor=any(s.is_anchor for s in samples))


def _decide(todo: list[Candidate], options: OptimizeOptions) -> dict | None:
    """The best candidate that passed every step, by the strategy; None when none passed."""
    rows = [(c, s) for c in todo if c.status == OK for s in c.latency]
    small, large = min(options.batches), max(options.batches)
    if options.strategy == "min-latency":
        rows, key, metric = [r for r in rows if r[1]["batch"] == small], (lambda r: -r[1]["p50_ms"]), "p50_ms"
    elif options.strategy == "max-throughput":
        rows, key, metric = [r for r in rows if r[1]["batch"] == large], (lambda r: r[1]["throughput"]), "throughput"
    else:
        rows = [r for r in rows if r[1]["p99_ms"] <= options.latency_ms]
        key, metric = (lambda r: r[1]["throughput"]), "throughput"
    if not rows:
        return None
    if all(r[1].get("speedup_vs_default") is not None for r in rows):
        # the same order on an even machine; on a drifting one the paired ratios, each timed beside the default
        # export, are the measure the load moves least (a candidate's p50 moves with the minute it ran in)
        key, metric = (lambda r: r[1]["speedup_vs_default"]), "speedup_vs_default"
    best, stats = max(rows, key=key)
    return {"strategy": options.strategy, "latency_ms": options.latency_ms, "chosen": best.name,
            "batch": stats["batch"], "metric": metric, "value": stats[metric], "p50_ms": stats["p50_ms"],
            "p99_ms": stats["p99_ms"], "throughput": stats["throughput"],
            "speedup_vs_default": stats.get("speedup_vs_default"),
            "form": best.form, "precision": best.precision, "int8_recipe": best.int8_recipe, "exporter": best.exporter,
            "runtime": best.runtime, "provider": best.provider, "provider_options": best.provider_options,
            "onnxruntime_providers": best.onnxruntime_providers(),
            "engine": f"candidates/{best.name}.plan" if best.runtime == "tensorrt" else None}


def _environment(options: OptimizeOptions, recipe: tuple[str, str]) -> dict:
    """The machine and library versions; on CUDA also the GPU, and the CUDA builds of torch and onnxruntime."""
    import polygraphy

    info = machine.describe(options.device, options.threads)
    info.update({"onnx": onnx.__version__, "polygraphy": polygraphy.__version__, "numpy": np.__version__,
                 "tmdeploy": __version__, "int8_recipes_for_this_cpu": {"recipes": list(recipe[0]), "why": recipe[1]}})
    if options.device == "cuda":
        import onnxruntime as ort
        from onnxruntime.capi import build_and_package_info as ort_build

        info.update({"onnxruntime_package": ort_build.package_name,
                     "onnxruntime_cuda": getattr(ort_build, "cuda_version", None),
                     "onnxruntime_providers": ort.get_available_providers(), "tensorrt": machine.tensorrt_version()})
    return info


def _status(ckpt, options, todo, profile, decision, held_out, recipes, recipe) -> dict:
    opts = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in asdict(replace(options, data=data.spec_text(options.data))).items() if k != "show_progress"}
    opts["target"] = opts["device"]  # the old name, recorded for one release
    c, h, w = ckpt.card.input_size
    return {
        "format": STATUS_FORMAT,
        "model": {"arch": ckpt.card.arch, "checkpoint": str(ckpt.path or ""), "sha256": ckpt.sha256 or "",
                  "input_size": [c, h, w], "classes": ckpt.card.num_classes},
        "environment": _environment(options, recipe),
        "options": {**opts, "int8_recipes": list(recipes)},
        "data": held_out,
        "candidates": [{"name": cand.name, "form": cand.form, "exporter": cand.exporter, "precision": cand.precision,
                        "int8_recipe": cand.int8_recipe, "runtime": cand.runtime, "provider": cand.provider,
                        "provider_options": cand.provider_options,
                        "onnxruntime_providers": cand.onnxruntime_providers(), "status": cand.status,
                        "reason": cand.reason,
                        "default_export": cand.is_default, "size_mb": cand.size_mb, "build_s": cand.build_s,
                        "steps": [asdict(s) for s in cand.steps], "tolerance": cand.tolerance, "errors": cand.errors,
                        "accuracy": cand.accuracy, "latency": cand.latency, "reproduce": cand.reproduce}
                       for cand in todo],
        "profile": profile,
        "decision": decision,
        "passed": decision is not None,
    }


def _stage_files(scratch: Path, status: dict, protos: dict, decision: dict | None) -> list[str]:
    """Write status.json and model.onnx into scratch; the files to copy out, relative to it."""
    files = [p.relative_to(scratch).as_posix() for p in sorted(scratch.rglob("*")) if p.is_file()]
    if decision is not None:
        model = onnx.ModelProto()
        model.CopyFrom(protos[decision["chosen"]])
        entry = model.metadata_props.add()
        entry.key, entry.value = CHOICE_KEY, json.dumps({k: decision[k] for k in (
            "chosen", "runtime", "provider", "provider_options", "engine", "strategy", "latency_ms", "batch", "p50_ms",
            "throughput", "speedup_vs_default")})
        onnx.save(model, str(scratch / OUTPUT_FILES["model"]))
        files.append(OUTPUT_FILES["model"])
    (scratch / OUTPUT_FILES["status"]).write_text(json_text(status))
    return files + [OUTPUT_FILES["status"]]


def _commit(scratch: Path, out: Path, files: list[str], source: Path | None) -> None:
    """Copy the finished files into ``out``, each atomically; status.json last, so it never describes
    files that are not there yet."""
    for name in files:
        atomic_write(out / name, lambda tmp, name=name: shutil.copyfile(scratch / name, tmp), source)
