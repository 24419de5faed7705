"""Every runtime tmdeploy runs ONNX files with, one module of this package each, and what is derived from them.

Each module ``tmdeploy/runtimes/<name>.py`` holds a tuple ``RUNTIMES`` of :class:`~.base.Runtime` entries, one
per device (and per setting a deployment must copy, such as onnxruntime's CUDA graph). From them come
``optimize --target``/``--device`` and ``--runtimes`` (the candidates' runtimes and their defaults, those
listed SKIPPED, the reproduction lines), ``check --runtime`` and its runner, the ``bench`` backends of the
runtimes other than PyTorch and onnxruntime, the report's "to be run by" and the versions in the records.

Adding a runtime, say ``acme`` on the CPU:

1. Write ``tmdeploy/runtimes/acme.py`` with ``RUNTIMES = (Runtime("acme", "cpu", "Acme", ("fp32", "fp16"),
   open=..., runner=..., reproduce=..., probe=..., version=..., suffix="acme", check=True, bench=("fp32",),
   bench_prefix="acme"),)``. ``open`` returns the session that is timed (``bind``/``fetch``/``close``, as
   :mod:`tmdeploy.bench.sessions`); ``runner`` a polygraphy runner for ``check`` (or None: the timed session
   is wrapped); ``probe`` returns why it cannot run here, with its install line (:func:`tmdeploy.optional.
   require`), or None. Import the runtime's own library inside these functions only: this entry is read
   by the CLI, which must start without it (tests/test_layout.py).
2. Add its pip extra to ``pyproject.toml`` and to :data:`tmdeploy.optional.EXTRAS`.
3. Nothing else: ``bench --backends acme-fp32``, ``check --runtime acme`` and ``optimize --runtimes acme``
   now exist, and its candidates are tried by default where its probe passes.

The modules are read in name order, onnxruntime first: its CPU and CUDA providers are the unit of every
speed-up (``Candidate.is_default``).
"""

from __future__ import annotations

import importlib
import pkgutil

from tmdeploy.errors import TmdeployError
from tmdeploy.runtimes.base import Runtime

_CORE = "onnxruntime"


def _entries() -> tuple[Runtime, ...]:
    package = importlib.import_module("tmdeploy.runtimes")
    found = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in ("base", "registry"))
    return tuple(entry for name in sorted(found, key=lambda n: (n != _CORE, n))
                 for entry in importlib.import_module(f"tmdeploy.runtimes.{name}").RUNTIMES)


ALL = _entries()
RUNTIMES = {device: {r.name: r for r in ALL if r.device == device} for device in dict.fromkeys(r.device for r in ALL)}
DEVICES = tuple(RUNTIMES)  # where a model can run: the --device values
CHECK_RUNTIMES = tuple(dict.fromkeys(r.name for r in ALL if r.check))  # check --runtime's choices


def get(name: str, device: str) -> Runtime | None:
    return RUNTIMES.get(device, {}).get(name)


def where(name: str) -> tuple[str, ...]:
    """The devices ``name`` runs on; () for a name no runtime has."""
    return tuple(d for d in DEVICES if name in RUNTIMES[d])


def require(runtime: Runtime) -> None:
    """Nothing, or one TmdeployError saying why it cannot run here and what installs it."""
    reason = runtime.probe()
    if reason:
        raise TmdeployError(reason)


VERSIONED = tuple(dict.fromkeys(r.name for r in ALL if r.version is not None))  # the optional runtimes


def versions() -> dict[str, str | None]:
    """The optional runtimes' versions (None: not installed), as bench.json and status.json record them."""
    return {r.name: r.version() for r in ALL if r.version is not None}


def by_label(name: str) -> str:
    """The runtime's label ("TensorRT"), whichever device; the name itself where none is known."""
    return next((r.label for r in ALL if r.name == name), name)
