"""A TensorRT engine's JSON sidecar (``model.plan.json``): what the engine says about itself, read warily.

The sidecar is a file beside the engine, so anyone may have edited it: it is opened without blocking
(a FIFO is refused, not waited on), bounded, and every value loading, serving and Triton read is checked
for the type :func:`tmdeploy.engines.tensorrt.make_sidecar` writes, so a bad one is one line, never a
TypeError further on.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tmdeploy.errors import TmdeployError, first_line
from tmdeploy.export import metadata
from tmdeploy.fileio import atomic_write
from tmdeploy.sanitize import clean

SIDECAR_FORMAT = "1"
# Keys that loading and Triton read without further checks: a hand-edited sidecar lacking one is refused.
SIDECAR_KEYS = ("cache_key", "engine_sha256", "tensorrt", "gpu", "compute_capability", "precision", "profile", "batch",
                "onnx_path", "onnx_sha256", "metadata")
MAX_SIDECAR_BYTES = 64 << 20  # class names and layer precisions of the largest models fit many times over


def sidecar_path(engine_path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path, sidecar: dict) -> Path:
    path = sidecar_path(engine_path)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n"))
    return path


def read_sidecar(engine_path) -> dict:
    """The engine's sidecar; TmdeployError when it is missing, not a regular file, or not tmdeploy's."""
    path = sidecar_path(engine_path)
    try:
        # O_NONBLOCK: a FIFO under the sidecar's name is opened without waiting for a writer, then refused
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TmdeployError(f"{engine_path} has no sidecar {path.name}: rebuild the engine with tmdeploy") from None
    except OSError as err:
        raise TmdeployError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise TmdeployError(f"{path} is not a regular file (a FIFO, socket or device?); refusing to read it")
            if st.st_size > MAX_SIDECAR_BYTES:
                raise TmdeployError(f"{path} holds {st.st_size:,} bytes, more than a sidecar ({MAX_SIDECAR_BYTES:,})")
            sidecar = json.loads(f.read(MAX_SIDECAR_BYTES + 1))
    except (OSError, ValueError, RecursionError) as err:
        raise TmdeployError(f"cannot read {path}: {first_line(err, 160)}") from None
    if not isinstance(sidecar, dict) or sidecar.get("sidecar_format") != SIDECAR_FORMAT:
        raise TmdeployError(f"{path} is not a tmdeploy engine sidecar (format {SIDECAR_FORMAT})")
    missing = [k for k in SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise TmdeployError(f"{path} lacks '{missing[0]}': rebuild the engine with tmdeploy")
    _check_sidecar_values(sidecar, path)
    return sidecar


def _check_sidecar_values(sidecar: dict, path: Path) -> None:
    """The values loading, serving and Triton read are of the types ``make_sidecar`` writes."""
    def positive(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    def bad(key: str, expected: str):
        return TmdeployError(f"{path}: '{key}' is {clean(repr(sidecar[key]))[:80]}, expected {expected}: rebuild the "
                             f"engine with tmdeploy")

    for key in ("cache_key", "engine_sha256", "tensorrt", "gpu", "compute_capability", "precision", "onnx_path",
                "onnx_sha256"):
        if not isinstance(sidecar[key], str):
            raise bad(key, "a string")
    batch, profile, meta = sidecar["batch"], sidecar["profile"], sidecar["metadata"]
    if not (isinstance(batch, dict) and all(positive(batch.get(k)) for k in ("min", "opt", "max"))
            and batch["min"] <= batch["opt"] <= batch["max"]):
        raise bad("batch", "{min, opt, max}: positive integers in order")
    if not (isinstance(profile, dict) and isinstance(profile.get("input"), str)
            and all(isinstance(profile.get(k), list) and profile[k] and all(positive(d) for d in profile[k])
                    for k in ("min", "opt", "max"))):
        raise bad("profile", "{input, min, opt, max}: a name and three shapes of positive integers")
    if not (isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise bad("metadata", "an object of strings")


def sidecar_metadata(sidecar: dict) -> metadata.ModelMetadata:
    return metadata.ModelMetadata.from_props(sidecar.get("metadata") or {})
