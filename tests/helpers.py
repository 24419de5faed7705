"""Helpers shared by the bad-input batteries (tests/test_errors.py, tests/test_untrusted.py): running the real
command line, judging its one error line, and seeing what it left on disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ESC = "\x1b"
# One thread per subprocess: several run at once on small machines, and OpenMP barriers stall otherwise.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def tmdeploy(*args, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tmdeploy", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600, **kwargs)


def one_line_error(result: subprocess.CompletedProcess, status: int, *expected: str) -> None:
    """The standard for bad input: exit ``status``, one terminal-safe ``tmdeploy: error:`` line naming it."""
    context = f"argv {result.args[3:]}\nstdout:\n{result.stdout[-1500:]}\nstderr:\n{result.stderr[-2500:]}"
    lines = result.stderr.splitlines()
    assert result.returncode == status, context
    assert len(lines) == 1 and lines[0].startswith("tmdeploy: error: "), context
    assert "internal error" not in lines[0] and "Traceback" not in result.stderr, context
    assert all(e in lines[0] for e in expected), context
    assert ESC not in result.stderr, context


def snapshot(d: Path) -> dict[str, str]:
    """Every path under ``d`` with its content hash ('dir' for directories)."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temp_files(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")]


def partly_written(directory: Path, name: str) -> Path | None:
    for p in temp_files(directory, name):
        try:
            if p.stat().st_size > 0:
                return p
        except FileNotFoundError:  # renamed into place between listing and stat
            pass
    return None


# ---- ONNX files whose tmdeploy metadata does not describe their graph -------------------------------------


def _add_input(model) -> None:
    from onnx import TensorProto, helper

    model.graph.input.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, [1]))


def _add_output(model) -> None:
    from onnx import TensorProto, helper

    model.graph.node.append(helper.make_node("Identity", ["logits"], ["extra"]))
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", 3]))


def _fix_batch(model) -> None:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1


def _baked_metadata(model) -> None:
    for p in model.metadata_props:
        if p.key == "preprocess":
            p.value = "baked"


# {name: (change to a tests/test_runtime.write_model file, distinctive part of the refusal)}
MISMATCHED_GRAPHS = {
    "two-inputs": (_add_input, "the graph takes 2 inputs (images, second); a tmdeploy model takes one"),
    "extra-output": (_add_output, "the graph has output(s) extra that the metadata does not name"),
    "fixed-batch": (_fix_batch, "the graph's batch axis is fixed at 1"),
    "baked-metadata-float-graph": (_baked_metadata, "preprocess 'baked', layout 'NCHW' and input_dtype 'float32' "
                                                    "do not go together"),
}


def mismatched_graph(path: Path, name: str) -> Path:
    """A small real ONNX classifier changed as ``MISMATCHED_GRAPHS[name]`` says, saved at ``path``."""
    import onnx
    from test_runtime import write_model

    model = onnx.load(str(write_model(path)))
    MISMATCHED_GRAPHS[name][0](model)
    onnx.save(model, str(path))
    return path
