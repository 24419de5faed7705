"""Checkpoint files: read and written so that loading never unpickles arbitrary objects.

A tmdeploy checkpoint is a plain ``torch.save`` of a dict of tensors, strings, numbers and lists, so that
``torch.load(path, weights_only=True)`` opens it. A ``.safetensors`` file is accepted too: its weights, with
our metadata as JSON in the header. A bare state_dict (either format) is read the same way, also inside the
wrappers training scripts save it in (``{"state_dict": ...}``, ``{"model": ...}``). Files of other kinds are
named as what they are: a ``torch.export`` program goes to :mod:`.program`, a TorchScript archive or a whole
pickled module is refused with what to save instead.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tmdeploy import __version__
from tmdeploy.checkpoint.card import ModelCard
from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.fileio import atomic_write, file_sha256
from tmdeploy.sanitize import clean

FORMAT = "tmdeploy-checkpoint"
FORMAT_VERSION = 1
SAFETENSORS_METADATA_KEY = "tmdeploy"
# where training scripts keep the weights in the dict they save (PyTorch Lightning, the ImageNet example, ...)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
SAVE_INSTEAD = ("save model.state_dict() and name the code that builds the model with --arch FILE.py:FUNCTION, "
                "or save a torch.export program (torch.export.save, .pt2)")


@dataclass
class RawCheckpoint:
    """A checkpoint file as read: its metadata (None for a bare state_dict) and its weights, not yet a model."""

    meta: dict | None
    state_dict: dict[str, torch.Tensor]
    path: Path
    sha256: str


# what `save` writes to: a torch file under an .onnx or .plan name would be taken for a model by every
# command that goes by the suffix (runtime.load, serve, Triton repositories)
SAVE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def check_save_path(path, option: str = "--out") -> None:
    """A checkpoint path whose suffix says what it holds: UsageError for any other."""
    suffix = Path(path).suffix
    if suffix not in SAVE_SUFFIXES:
        raise UsageError(f"{option} {clean(str(path))[:200]}: a checkpoint is written as {', '.join(SAVE_SUFFIXES)}, "
                         f"not {clean(suffix)[:30] or 'a name without a suffix'}")


def save(path, model: nn.Module, card: ModelCard) -> Path:
    """Save model and card: safetensors when the suffix says so, else a weights_only-loadable torch file."""
    path = Path(path)
    check_save_path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = card_to_dict(card)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={SAFETENSORS_METADATA_KEY: json.dumps(meta)}))
    else:
        payload = {**meta, "state_dict": state}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def card_to_dict(card: ModelCard) -> dict:
    """The card as a checkpoint file stores it, with the file format's own fields."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tmdeploy_version": __version__,
        **asdict(card),
        "input_size": list(card.input_size),
    }


def check_readable(path: Path) -> None:
    """An existing, non-empty regular path to read a model from; one TmdeployError otherwise."""
    if not path.exists():
        raise TmdeployError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise TmdeployError(f"checkpoint path is a directory, not a file: {path}")
    try:
        if path.stat().st_size == 0:
            raise TmdeployError(f"checkpoint is empty (0 bytes): {path}")
    except OSError as err:
        raise TmdeployError(f"cannot read checkpoint {path}: {err.strerror or err}") from err


def read(path) -> RawCheckpoint:
    """Read a checkpoint file safely: its metadata and weights, checked to be plain dense tensors."""
    path = Path(path)
    check_readable(path)
    try:
        if is_program(path):
            raise TmdeployError(f"{path} is a torch.export program, not a checkpoint: it is loaded as a model")
        meta, state = _read_safetensors(path) if _is_safetensors(path) else _read_torch(path)
        sha256 = file_sha256(path)
    except OSError as err:  # unreadable (permissions, I/O error), or removed while we read it
        raise TmdeployError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    _check_state_dict(state, path)
    if meta is not None and not isinstance(meta, dict):
        raise TmdeployError(f"{path}: checkpoint metadata is not a mapping")
    if meta is not None:
        version = meta.get("format_version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise TmdeployError(f"{path}: checkpoint format version {version!r:.50} is not one this tmdeploy reads "
                                f"(1..{FORMAT_VERSION})")
    return RawCheckpoint(meta, state, path, sha256)


def check_finite(state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse weights that are NaN or Inf in float32, naming the tensor: the graph would silently emit NaN.

    Checked after the cast to float32, what the model and its graph hold: a float64 1e300 is finite in
    the file and Inf in the graph. A negative BatchNorm running variance is refused too: folded into the
    convolution it becomes the square root of a negative number.
    """
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        held = tensor.to(torch.float32)
        if not bool(torch.isfinite(held).all()):
            cast = " once cast to float32, the graph's type" if bool(torch.isfinite(tensor).all()) else ""
            raise TmdeployError(f"weight '{name}' contains NaN or Inf values{cast}; refusing to export it")
        if name.endswith("running_var") and bool((held < 0).any()):
            raise TmdeployError(f"BatchNorm running variance '{name}' has negative values; refusing to export it")


def is_program(path: Path) -> bool:
    """Whether ``path`` is a ``torch.export.save`` archive (whatever its suffix)."""
    return _zip_kind(path) == "program"


def _zip_kind(path: Path) -> str | None:
    """"program" (torch.export), "torchscript" (torch.jit.save), "torch" (torch.save), or None: not a zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    parts = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in parts or any(p.startswith("models/") and p.endswith(".json") for p in parts):
        return "program"
    if "constants.pkl" in parts or any(p.startswith("code/") for p in parts):
        return "torchscript"
    return "torch"


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(head) == 9 and head[8:9] == b"{"


def _read_torch(path: Path):
    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile as err:  # is_zipfile itself raises on some damaged directories
        raise TmdeployError(f"cannot read checkpoint {path}: file is truncated or corrupt ({err})") from err
    if not is_zip:
        with open(path, "rb") as f:
            zip_head = f.read(4) == b"PK\x03\x04"
        if zip_head:  # starts like a zip archive, but its directory at the end is missing: cut short
            raise TmdeployError(f"cannot read checkpoint {path}: file is truncated or corrupt (no zip directory)")
        raise TmdeployError(f"{path} is not a PyTorch checkpoint (not a torch.save zip archive)")
    if _zip_kind(path) == "torchscript":
        raise TmdeployError(f"{path} is a TorchScript archive (torch.jit.save), which holds code, not a "
                            f"checkpoint: {SAVE_INSTEAD}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, err) from err
    except Exception as err:  # weights_only: nothing ran, so any other failure is a damaged file
        raise TmdeployError(f"cannot read checkpoint {path}: file is truncated or corrupt ({type(err).__name__})") from err
    if not isinstance(obj, dict):
        raise TmdeployError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state_dict")
    if obj.get("format") == FORMAT:
        state = obj.get("state_dict")
        if not isinstance(state, dict):
            raise TmdeployError(f"{path} is a tmdeploy checkpoint without a state_dict")
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        return meta, state
    return None, _unwrap(obj, path)


def _unpickling_error(path: Path, err: Exception) -> TmdeployError:
    """The weights-only unpickler raises the same error for a pickle that names callables it will not import
    (the reason a pickle could run code) and for a malformed one; torch lists the former without running
    anything, and a whole module saved with ``torch.save(model)`` is the common case of it."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a pickle it cannot even scan is a damaged file
        unsafe = []
    if not unsafe:
        return TmdeployError(f"cannot read checkpoint {path}: file is truncated or corrupt (its pickle is malformed)")
    calls = clean(", ".join(unsafe))[:160]
    if any(name.startswith("torch.nn.modules.") for name in unsafe):
        return TmdeployError(f"refusing to load {path}: it holds a whole pickled module (torch.save(model); it "
                             f"calls {calls}), which could run code when unpickled: {SAVE_INSTEAD}")
    return TmdeployError(f"refusing to load {path}: it holds objects other than tensors and plain data, "
                         f"which could run code when unpickled (it calls {calls})")


def _unwrap(obj: dict, path: Path) -> dict:
    """The state_dict in ``obj``: ``obj`` itself, or the dict of tensors under a training script's key."""
    if _tensors_only(obj):
        return obj
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict) and _tensors_only(obj[key]):
            return obj[key]
    raise TmdeployError(f"{path} is neither a tmdeploy checkpoint nor a state_dict of tensors (nor one under "
                        f"{', '.join(repr(k) for k in WRAPPER_KEYS)})")


def _tensors_only(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _check_state_dict(state, path: Path) -> None:
    """Weights must be a non-empty mapping of names to plain dense tensors, whatever the file claimed."""
    if not isinstance(state, dict) or not state:
        raise TmdeployError(f"{path}: the checkpoint holds no weights")
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise TmdeployError(f"{path}: weight names must be strings, got {type(name).__name__}")
        if not isinstance(tensor, torch.Tensor):
            raise TmdeployError(f"{path}: weight '{name[:100]}' is a {type(tensor).__name__}, not a tensor")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type != "cpu":
            raise TmdeployError(f"{path}: weight '{name[:100]}' is not a dense tensor ({tensor.layout})")


def _read_safetensors(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise TmdeployError(f"cannot read safetensors file {path}: {first_line(err, 160)}") from err
    raw = header.get(SAFETENSORS_METADATA_KEY)
    if raw is None:
        return None, state
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError; RecursionError: nested too deep
        raise TmdeployError(f"{path}: tmdeploy metadata in the safetensors header is not valid JSON") from err
    return meta, state
