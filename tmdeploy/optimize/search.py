"""``tmdeploy optimize``: the fastest deployment that keeps accuracy, chosen by measurement.

``optimize(ckpt, OptimizeOptions(...))`` lists every candidate (:mod:`.candidates`) and takes each through
the steps, each a small function over one typed run context (:class:`~.run.Run`): **build** it with the
export stage, check its **parity** against PyTorch with the verify stage (polygraphy's Comparator, at the
precision's tolerances, on held-out images, run by the candidate's runtime), measure its **accuracy** on the
whole held-out split (:mod:`.steps`); **profile** the correct ones side by side with the bench stage's
interleaved timing, in windows until two agree (:mod:`.profile`); **decide** the best by the strategy
(:mod:`.decide`); and **stage** the choice as ``model.onnx`` and every record as ``status.json``
(:class:`~.status.Status`), made in scratch space and committed into the output folder all or nothing
(:mod:`.stage`), so a run that fails or is interrupted changes nothing there.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from tmdeploy import __version__, data
from tmdeploy.bench import machine
from tmdeploy.bench.suite import cpu_reference_predictions, held_out_images
from tmdeploy.checkpoint import Deployable, as_deployable
from tmdeploy.errors import UsageError
from tmdeploy.export.options import FORMS
from tmdeploy.export.precision import calibration_loader
from tmdeploy.export.to_onnx import calibration_data
from tmdeploy.optimize import steps
from tmdeploy.optimize.candidates import Candidate, candidates
from tmdeploy.optimize.decide import decide
from tmdeploy.optimize.options import OUTPUT_FILES, OptimizeOptions
from tmdeploy.optimize.profile import profile
from tmdeploy.optimize.progress import LiveTable
from tmdeploy.optimize.run import HeldOut, Run
from tmdeploy.optimize.stage import check_targets, commit, stage
from tmdeploy.optimize.status import CandidateRecord, Status
from tmdeploy.runtimes import RUNTIMES
from tmdeploy.threads import torch_threads
from tmdeploy.verify.parity import References

GPU_INT8 = (("tensorrt",), "on a GPU INT8 is TensorRT's: its recipe, for its engine and onnxruntime's "
                           "TensorRT provider")


@dataclass
class OptimizeResult:
    out: Path
    record: Status  # what status.json holds
    files: list[str]  # what was written into out, relative to it

    @property
    def status(self) -> dict:
        return self.record.to_dict()

    @property
    def passed(self) -> bool:  # a candidate passed every step: the exit status is 0
        return self.record.passed

    @property
    def choice(self) -> str | None:
        return (self.record.decision or {}).get("chosen")


def default_out(ckpt: Deployable) -> Path:
    if ckpt.path is None:
        raise UsageError("no output folder: pass --out")
    return ckpt.path.with_name(f"{ckpt.path.stem}-optimized")


def optimize(model, options: OptimizeOptions = OptimizeOptions(),
             report: Callable[[dict, Path], dict] | None = None) -> OptimizeResult:
    """Try, check, time and choose as the module docstring says for ``model`` (a Deployable or a zoo
    checkpoint); returns what was written where. ``report(status, folder)``: writes the report's files into
    the folder (tmdeploy.report.write_optimize_report), so they are committed with the rest."""
    options = options.effective()
    options.validate()
    ckpt = as_deployable(model)
    options = replace(options, out=Path(options.out) if options.out is not None else default_out(ckpt))
    given = None if isinstance(options.data, str) and options.data == "auto" else data.as_source(options.data)
    spec = calibration_data(ckpt, given, option="--data")
    picked, why = machine.int8_recipes() if options.device == "cpu" else GPU_INT8
    recipes = options.int8_recipes or tuple(dict.fromkeys((*picked, "tensorrt")))
    installed, missing = _runtimes(options.device)
    options = replace(options, forms=options.forms or tuple(FORMS), runtimes=options.runtimes or installed)
    todo = candidates(options, recipes, options.runtimes, missing)
    # every file the run may write, checked now (the checkpoint too, now known): a bad target fails at once
    check_targets(options.out, [*OUTPUT_FILES.values(), *steps.REPRO,
                                *(f"candidates/{c.name}{suffix}" for c in todo for suffix in (".onnx", ".plan"))],
                  ckpt.path)
    with tempfile.TemporaryDirectory(prefix="tmdeploy-optimize-") as scratch, \
            torch_threads(options.threads), LiveTable(todo, options.show_progress) as table:
        images, labels, record = held_out_images(ckpt, spec, options.seed, options.accuracy_limit)
        held_out = HeldOut(images, labels, record, cpu_reference_predictions(ckpt, images, max(options.batches)))
        run = Run(ckpt, options, spec, Path(scratch), table, held_out, calibration_loader(spec), References(ckpt))
        try:
            for cand in todo:
                for step in (steps.build, steps.skip_if_seen, steps.parity, steps.accuracy):
                    step(run, cand)
            timings = profile(run, todo)
        finally:
            run.close()
        status = _status(run, todo, timings, decide(todo, options), recipes, (picked, why))
        files = stage(run.scratch, status, run.protos, report)
        commit(run.scratch, options.out, files, ckpt.path)
    return OptimizeResult(options.out, status, files)


def _runtimes(device: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The runtimes tried by default on ``device``, and those listed SKIPPED, with why: each runtime whose
    probe passes; one whose probe fails is left out, or listed SKIPPED where its entry says so
    (tmdeploy's TensorRT engine, where the tensorrt module does not import)."""
    names, missing = [], {}
    for runtime in RUNTIMES[device].values():
        reason = runtime.probe()
        if reason and runtime.missing == "drop":
            continue
        names.append(runtime.name)
        if reason:
            missing[runtime.name] = reason
    return tuple(names), missing


def _environment(options: OptimizeOptions, recipe: tuple[tuple[str, ...], str]) -> dict:
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


def _status(run: Run, todo: list[Candidate], timings: list[dict], decision: dict | None, recipes: tuple[str, ...],
            recipe: tuple[tuple[str, ...], str]) -> Status:
    options, card = run.options, run.ckpt.card
    opts = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in asdict(replace(options, data=data.spec_text(options.data))).items() if k != "show_progress"}
    opts["target"] = opts["device"]  # the old name, recorded for one release
    model = {"arch": card.arch, "checkpoint": str(run.ckpt.path or ""), "sha256": run.ckpt.sha256 or "",
             "input_size": list(card.input_size), "classes": card.num_classes}
    return Status(model=model, environment=_environment(options, recipe), options={**opts, "int8_recipes": list(recipes)},
                  data=run.held_out.record, candidates=[CandidateRecord.of(c) for c in todo], profile=timings,
                  decision=decision)
