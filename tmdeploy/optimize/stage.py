"""The stage step: the run's files made in scratch space, then committed into the output folder all or nothing.

Every target is checked before the first one is replaced (a regular file or nothing, inside directories,
in folders tmdeploy may write, never an input). The new files are copied into a hidden staging folder inside
DIR (the same file system), and then, with SIGINT and SIGTERM held back until it is done, each old file is
moved aside and its new one renamed into place; if a rename fails, the old files are put back. So a run that
fails or is interrupted leaves DIR as it was, and a finished one leaves the new files; the user's other
files in DIR are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import onnx

from tmdeploy import signals
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.fileio import check_output_dir, json_text
from tmdeploy.optimize.options import OUTPUT_FILES
from tmdeploy.optimize.status import Status

CHOICE_KEY = "tmdeploy_optimize"  # the metadata entry of model.onnx naming the choice
_CHOICE_FIELDS = ("chosen", "runtime", "provider", "provider_options", "engine", "strategy", "latency_ms", "batch",
                  "p50_ms", "throughput", "speedup_vs_default")


def stage(scratch: Path, status: Status, protos: dict, report: Callable[[dict, Path], dict] | None) -> list[str]:
    """Write model.onnx (the choice, named in its metadata), status.json and, by ``report``, the report's
    files into scratch; the files to commit, relative to it."""
    files = [p.relative_to(scratch).as_posix() for p in sorted(scratch.rglob("*")) if p.is_file()]
    if status.decision is not None:
        model = onnx.ModelProto()
        model.CopyFrom(protos[status.decision["chosen"]])
        entry = model.metadata_props.add()
        entry.key, entry.value = CHOICE_KEY, json.dumps({k: status.decision[k] for k in _CHOICE_FIELDS})
        onnx.save(model, str(scratch / OUTPUT_FILES["model"]))
        files.append(OUTPUT_FILES["model"])
    (scratch / OUTPUT_FILES["status"]).write_text(json_text(status.to_dict()))
    files.append(OUTPUT_FILES["status"])
    if report is not None:
        files += [Path(p).relative_to(scratch).as_posix() for p in report(status.to_dict(), scratch).values()]
    return files


def check_targets(out: Path, names, source: Path | None) -> None:
    """Refuse, in one line, a target that could not be replaced: not a regular file, under something that is
    not a directory, in a folder this process may not write, or an input."""
    check_output_dir(out, names, source, option="--out")
    folders = {out}
    for name in names:
        for parent in (out / name).relative_to(out).parents:
            folder = out / parent
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"--out {folder} is not a directory: {name} cannot be written there")
            folders.add(folder)
    for folder in sorted(folders):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise TmdeployError(f"cannot write {folder}: permission denied")


def commit(scratch: Path, out: Path, files: list[str], source: Path | None) -> None:
    """Copy ``files`` from ``scratch`` into ``out``, all of them or none (the module docstring)."""
    check_targets(out, files, source)
    folders = {out} | {out / parent for f in files for parent in Path(f).parents}
    made = [p for p in folders if not p.exists()]  # the folders this commit creates: removed if it fails
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmdeploy-optimize-", dir=out))
    except OSError as err:
        raise TmdeployError(f"cannot write {out}: {err.strerror or err}") from err
    committed = False
    try:
        for name in files:
            new = staging / "new" / name
            new.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(scratch / name, new)
        with signals.deferred():
            _swap(out, staging, files)
        committed = True
    except OSError as err:
        raise TmdeployError(f"cannot write {out}: {err.strerror or err} (nothing in it was changed)") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not committed:
            for path in sorted(made, key=lambda p: len(p.parts), reverse=True):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()


def _swap(out: Path, staging: Path, files: list[str]) -> None:
    """Each old file aside, each new one in its place; on a failure, every old file back."""
    done: list[tuple[str, bool]] = []
    try:
        for name in files:
            target, old = out / name, staging / "old" / name
            had = os.path.lexists(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            if had:
                old.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, old)
            done.append((name, had))
            os.replace(staging / "new" / name, target)
    except BaseException:
        for name, had in reversed(done):
            if had:
                os.replace(staging / "old" / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)
        raise
