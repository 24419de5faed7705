"""``tmdeploy export``'s composition: the ONNX file, and from it a TensorRT engine or a Triton repository.

:func:`plan` checks every output before the (slow) checkpoint load, so a bad target fails at once and a
failed export changes no file; :func:`write` makes them. Beside the stages (it composes export, engines and
optimize's ``--tm-form auto``), as the CLI is, so that the CLI only parses.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tmdeploy.engines.options import EngineOptions
from tmdeploy.errors import UsageError
from tmdeploy.export.options import AUTO_FORM, ExportOptions
from tmdeploy.fileio import check_output, check_output_dir


@dataclass(frozen=True)
class Plan:
    export: ExportOptions
    engines: EngineOptions
    out: Path | None  # --out: the ONNX file, the engine (trt) or the repository (triton); None: the defaults
    checkpoint: Path  # the source, which no output may overwrite
    onnx_out: Path | None  # where the ONNX file goes (trt: beside the engine)
    engine: bool  # a TensorRT engine is built


def plan(export: ExportOptions, engines: EngineOptions, out: Path | None, checkpoint: Path) -> Plan:
    """Every option and output checked, and TensorRT's presence where an engine is built."""
    export.validate()
    engines.validate()
    engines.profile()
    engine = engines.builds_engine()
    if engines.format == "triton":  # a Triton --out is the repository directory; other models' files stay
        from tmdeploy.engines.triton import check_model_dir, model_files, model_name

        repo = out or checkpoint.parent / "model_repository"
        check_output_dir(repo, option="--out")
        check_model_dir(repo / model_name(checkpoint), model_files("tensorrt_plan" if engine else "onnxruntime_onnx"))
    elif out is not None:
        check_output(out, checkpoint, option="--out")
    onnx_out = out
    if engines.format == "trt" and out is not None:  # the ONNX file goes beside the engine, not the checkpoint
        onnx_out = out.with_suffix(".onnx")
        if onnx_out == out:
            raise UsageError(f"--out {out}: with --format trt it names the engine; use a .plan or .engine suffix")
        check_output(onnx_out, checkpoint, option="--out")
    if engines.timing_cache is not None:  # TensorRT writes it: the same rules as every other output
        check_output(engines.timing_cache, checkpoint, option="--timing-cache")
    if engine:  # before anything is written: without TensorRT a failed export changes no file
        from tmdeploy.engines.tensorrt import UNSIGNED_INT8, import_tensorrt

        if export.precision == "int8" and export.int8_target != "tensorrt":
            raise UsageError(f"--format {engines.format} builds a TensorRT engine, and an INT8 graph that {UNSIGNED_INT8}")
        import_tensorrt()
    return Plan(export, engines, out, checkpoint, onnx_out, engine)


def write(ckpt, plan: Plan, say: Callable[[str], None] = print) -> None:
    """Export ``ckpt`` as ``plan`` says, saying what was written as it is written."""
    from tmdeploy.export import export_onnx

    engines, batch = plan.engines, plan.engines.profile()
    with tempfile.TemporaryDirectory(prefix="tmdeploy-") as scratch:
        # Triton gets copies in its repository: the ONNX file and engine are built in scratch space, so
        # nothing is written beside the checkpoint, outside --out.
        onnx_out = Path(scratch, "model.onnx") if engines.format == "triton" else plan.onnx_out
        if plan.export.tm_form == AUTO_FORM:
            from tmdeploy.optimize import export_auto

            path = export_auto(ckpt, onnx_out, plan.export)
        else:
            path = export_onnx(ckpt, onnx_out, plan.export)
        if engines.format != "triton":
            say(f"wrote {path}")
        if plan.engine:
            from tmdeploy.engines.tensorrt import build_engine

            engine_out = plan.out if engines.format == "trt" else None
            path = build_engine(path, engine_out, batch=batch, workspace_mib=engines.workspace_mib,
                                timing_cache=engines.timing_cache, force=engines.force)
            if engines.format != "triton":
                say(f"wrote {path} (+ {path.name}.json sidecar)")
        if engines.format == "triton":
            from tmdeploy.engines.triton import model_name, write_model_repository

            repo = plan.out or plan.checkpoint.parent / "model_repository"
            model_dir = write_model_repository(path, repo, name=model_name(plan.checkpoint), max_batch_size=batch.max)
            served = "a TensorRT engine" if plan.engine else "the ONNX file (onnxruntime)"
            say(f"wrote Triton model repository {model_dir}, serving {served}")
