"""The steps every candidate goes through before timing: build, parity, accuracy (:mod:`.profile` times them).

Each is a small function over the run's context (:class:`~.run.Run`) and one candidate, and they share one
scaffold (:func:`_take`): a step whose prerequisite did not pass is SKIPPED, otherwise it is timed, its
exception is its FAILED reason in one line, and the live table is told.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Callable

import numpy as np
import onnx
from polygraphy.common import TensorMetadata

from tmdeploy import data, onnxfile
from tmdeploy.bench.backends import predict_all
from tmdeploy.bench.timing import FAILED, OK, SKIPPED, error_line
from tmdeploy.export import ExportOptions, to_model_proto
from tmdeploy.export.metadata import ModelMetadata, props
from tmdeploy.export.precision import INT8_RECIPES, lower_precision
from tmdeploy.export.to_onnx import INPUT_NAME
from tmdeploy.optimize.candidates import Candidate
from tmdeploy.optimize.run import Run
from tmdeploy.runtimes import Line
from tmdeploy.runtimes.onnxruntime import plain
from tmdeploy.verify.options import CheckOptions
from tmdeploy.verify.parity import check
from tmdeploy.verify.runners import SessionRunner

REPRO = ("repro/inputs.json", "repro/reference.json")  # polygraphy's --load-inputs / --load-outputs files


def _take(run: Run, cand: Candidate, step: str, body: Callable[[], str], needs: str | None = "build") -> None:
    """Run ``body`` as ``cand``'s ``step``: it returns its FAILED reason ("" when it passed)."""
    if needs and cand.step(needs).status != OK:
        return cand.mark(step, SKIPPED, "not built")
    run.table.update(cand, step)
    start = time.perf_counter()
    try:
        reason = body()
    except Exception as err:  # noqa: BLE001 - a candidate that cannot take a step is a record, not the end
        reason = error_line(err)
    cand.mark(step, FAILED if reason else OK, reason, time.perf_counter() - start)
    run.table.update(cand)


class _Quiet:
    """onnxruntime.quantization's advice lines (logged on the root logger) once per INT8 candidate: noise."""

    def __enter__(self):
        self.level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.root.setLevel(self.level)


def build(run: Run, cand: Candidate) -> None:
    """The candidate's file (its form's export, lowered to its precision once for every runtime), and where it
    runs on more than the plain onnxruntime, its session (the runtime's compile, the engine)."""
    if cand.skipped:
        cand.mark("build", SKIPPED, cand.skipped)
        return run.table.update(cand)

    def body() -> str:
        fp32_key = (cand.form, cand.exporter, "fp32", None)
        if fp32_key not in run.graphs:
            run.graphs[fp32_key] = to_model_proto(run.ckpt, ExportOptions(tm_form=cand.form, exporter=cand.exporter))
        key = (cand.form, cand.exporter, cand.precision, cand.int8_recipe)
        if key not in run.graphs:  # an FP16 graph serves every runtime alike: lowered once
            fp32 = run.graphs[fp32_key]
            meta = ModelMetadata.from_props(props(fp32))
            recipe = INT8_RECIPES[cand.int8_recipe] if cand.int8_recipe else None
            with _Quiet():
                run.graphs[key] = lower_precision(fp32, cand.precision, meta=meta, calibration=run.calibration(meta),
                                                  show_progress=False, int8_recipe=recipe)
        path = run.path(cand)
        path.parent.mkdir(exist_ok=True)
        onnx.save(run.graphs[key], str(path))
        run.protos[cand.name] = run.graphs[key]
        try:
            if cand.provider != onnxfile.CPU[0]:
                run.session(cand)
        except BaseException:
            run.protos.pop(cand.name)
            raise
        artifact = run.sessions[cand.name].artifact_bytes if cand.runtime == "tensorrt" else path.stat().st_size
        cand.size_mb = artifact / 1e6
        return ""

    _take(run, cand, "build", body, needs=None)
    if cand.step("build").status == OK:
        cand.build_s = cand.step("build").seconds


def skip_if_seen(run: Run, cand: Candidate) -> None:
    """A candidate whose graph is byte for byte one already built for the same runtime and settings is not
    checked or timed again (a network without template-matching blocks has one graph for every form)."""
    if cand.step("build").status != OK:
        return
    digest = hashlib.sha256(run.protos[cand.name].graph.SerializeToString(deterministic=True)).hexdigest()
    key = (digest, cand.runtime, cand.provider, json.dumps(cand.provider_options, sort_keys=True))
    if key not in run.seen:
        run.seen[key] = cand.name
        return
    cand.mark("build", SKIPPED, f"the same graph as {run.seen[key]}")
    run.drop(cand)
    run.table.update(cand)


def parity(run: Run, cand: Candidate) -> None:
    """polygraphy's Comparator against PyTorch on held-out images, run by the candidate's runtime (its own
    runner, or the session that is timed), at the precision's tolerances."""
    def body() -> str:
        options = run.options
        inputs, reference = (run.scratch / name for name in REPRO)
        first = not reference.exists()  # the inputs and PyTorch's outputs are the same for every candidate
        # held-out images, not random tensors: INT8 scales are calibrated for images, and on N(0, 1) noise
        # rn26-tm's INT8 graphs agreed with PyTorch on 81% of inputs while agreeing on 100% of digits test images
        on_cuda = options.device == "cuda"
        check_options = CheckOptions(data=run.spec, seed=options.seed, atol=options.atol, rtol=options.rtol,
                                     save_inputs=inputs if first else None, save_outputs=reference if first else None,
                                     runtime=cand.runtime if cand.entry.runner else "onnxruntime",
                                     device=options.device,
                                     cuda_options=plain(cand.provider_options) if on_cuda else None,
                                     tensorrt_int8_arithmetic=False)  # judged as it is timed: onnxruntime's kernels
        runner = None
        if cand.entry.runner is None:  # TensorRT, onnxruntime's TensorRT provider: the session built and timed
            c, h, w = run.ckpt.card.input_size
            runner = SessionRunner(run.sessions[cand.name],
                                   TensorMetadata().add(INPUT_NAME, np.float32, (-1, c, h, w)), "logits",
                                   name=cand.runtime)
        report = check(run.ckpt, run.path(cand), check_options, runner, run.references)
        stats = report.outputs["logits"]
        cand.tolerance, cand.errors = report.tolerance, {k: v for k, v in stats.items() if k != "passed"}
        cand.reproduce = _reproduce_command(run, cand, check_options, report.tolerance, stats)
        return "" if report.passed else _parity_reason(report.tolerance, stats)

    _take(run, cand, "parity", body)


def _parity_reason(tol: dict, stats: dict) -> str:
    if not stats["finite"]:
        return "the outputs hold NaN or Inf"
    if not stats["elementwise_passed"]:
        return (f"max abs error {stats['max_abs_error']:.3g} beyond atol {tol['atol']:g} "
                f"(max rel error {stats['max_rel_error']:.3g}, rtol {tol['rtol']:g})")
    return f"top-1 agreement {stats['top1_agreement']:.2%} < {tol['min_top1']:.2%}"


def _reproduce_command(run: Run, cand: Candidate, check_options: CheckOptions, tol: dict,
                       stats: dict) -> dict | None:
    """The CLI line, run in the output folder, that re-checks this file's logits against PyTorch's: polygraphy's
    own, without tmdeploy, where polygraphy runs the runtime; else ``tmdeploy check --runtime`` (the entry's).

    FP32/FP16 use the precision's tolerances. INT8 is judged by top-1 agreement, which polygraphy does not
    check: its line bounds the errors at the measured maximum instead, a regression check. None: the runtime
    has no such line.
    """
    if cand.entry.reproduce is None:
        return None
    if tol["elementwise"]:
        atol, rtol, what = tol["atol"], tol["rtol"], "the precision's tolerances"
    else:
        atol, rtol = float(f"{stats['max_abs_error'] * 1.01 + 1e-6:.3g}"), 0.0
        what = "the measured max abs error (INT8 is judged by top-1 agreement, which polygraphy does not check)"
    loads = f"--load-inputs {REPRO[0]} --load-outputs {REPRO[1]} --atol {atol:g} --rtol {rtol:g}"
    line = Line(cand.name, str(run.ckpt.path or "CHECKPOINT"), data.spec_text(check_options.data),
                check_options.seed, loads, atol, rtol, what, cand.provider_options)
    return cand.entry.reproduce(cand.entry, line)


def accuracy(run: Run, cand: Candidate) -> None:
    """Top-1 and agreement with PyTorch FP32 on the whole held-out split, against the options' bounds."""
    def body() -> str:
        options, held = run.options, run.held_out
        predicted = predict_all(run.session(cand), held.images,
                                min(max(options.batches), len(held.images))).argmax(axis=1)
        top1, ref_top1 = float((predicted == held.labels).mean()), float((held.reference == held.labels).mean())
        agreement = float((predicted == held.reference).mean())
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
            misses.append(f"top-1 {top1:.2%} < {options.min_top1:.2%} "
                          f"(by {(options.min_top1 - top1) * 100:.2f} points)")
        return "; ".join(misses)

    _take(run, cand, "accuracy", body)
