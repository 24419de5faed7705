"""One checkpoint file that carries everything needed to rebuild and deploy a model.

The file is a plain ``torch.save`` of a dict of tensors, strings, numbers and lists, so that
``torch.load(path, weights_only=True)`` opens it and loading never unpickles arbitrary objects.
A ``.safetensors`` file is accepted too: its weights, with our metadata as JSON in the header.
A bare state_dict (either format) is accepted when the caller names the architecture.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from tmdeploy import __version__, models
from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.fileio import atomic_write, file_sha256
from tmdeploy.sanitize import clean
from tmdeploy.values import (MAX_CHANNELS, MAX_CLASSES, check_option, input_size_problem, normalization_problem,
                             plain_list)

FORMAT = "tmdeploy-checkpoint"
FORMAT_VERSION = 1
SAFETENSORS_METADATA_KEY = "tmdeploy"


@dataclass
class ModelCard:
    """What a deployed model must know about itself besides its weights."""

    arch: str
    arch_kwargs: dict
    class_names: list[str]
    input_size: tuple[int, int, int]  # C, H, W
    mean: list[float]
    std: list[float]
    extra: dict = field(default_factory=dict)  # training record: epochs, accuracy, seed, data

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def training_data(self) -> str | None:
        """The data spec the model was trained on, as ``tmdeploy train`` recorded it; None if unknown."""
        train = self.extra.get("train")
        spec = train.get("data") if isinstance(train, dict) else None
        return spec if isinstance(spec, str) else None


@dataclass
class Checkpoint:
    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    path: Path | None = None
    sha256: str | None = None

    def build_model(self) -> nn.Module:
        """Rebuild the architecture and load the weights, naming the first tensor that does not fit.

        The architecture is first built on the meta device (shapes, no memory) and checked against the
        weights, so options read from an untrusted file cannot make us allocate more than the file holds.
        """
        try:
            with torch.device("meta"):
                skeleton = models.create(self.card.arch, **self.card.arch_kwargs)
        except Exception as err:  # the options come from the file: any failure means they do not build
            raise TmdeployError(f"checkpoint's architecture options {self.card.arch_kwargs!r:.200} do not build "
                                f"{self.card.arch}: {first_line(err, 200) or type(err).__name__}") from err
        expected = skeleton.state_dict()
        for name, tensor in expected.items():
            if name not in self.state_dict:
                raise TmdeployError(f"checkpoint does not fit {self.card.arch}: tensor '{name}' is missing")
            got = self.state_dict[name]
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(tensor.shape):
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise TmdeployError(
                    f"checkpoint does not fit {self.card.arch}: tensor '{name}' has shape {shape}, "
                    f"the architecture needs {tuple(tensor.shape)}"
                )
            if got.is_floating_point() != tensor.is_floating_point() or got.is_complex():
                # loading would cast it silently: a complex weight loses its imaginary part, an integer one
                # escapes the finite-values check
                raise TmdeployError(f"checkpoint does not fit {self.card.arch}: tensor '{name}' is {got.dtype}, "
                                    f"the architecture needs {tensor.dtype}")
        unexpected = sorted(set(self.state_dict) - set(expected))
        if unexpected:
            raise TmdeployError(f"checkpoint does not fit {self.card.arch}: unexpected tensor '{unexpected[0][:100]}'")
        model = models.create(self.card.arch, **self.card.arch_kwargs)
        model.load_state_dict(self.state_dict)
        return model.eval()


def card_for(model: nn.Module, class_names, mean, std, input_size=None, extra=None) -> ModelCard:
    """The card of a model built by :func:`tmdeploy.models.create`."""
    size = tuple(input_size) if input_size is not None else tuple(model.default_input_size)
    return ModelCard(
        arch=model.arch_name,
        arch_kwargs=dict(model.arch_kwargs),
        class_names=[str(c) for c in class_names],
        input_size=tuple(int(s) for s in size),
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        extra=dict(extra or {}),
    )


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
    meta = _card_to_dict(card)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={SAFETENSORS_METADATA_KEY: json.dumps(meta)}))
    else:
        payload = {**meta, "state_dict": state}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load(path, arch: str | None = None, num_classes: int | None = None, in_chans: int | None = None) -> Checkpoint:
    """Load a checkpoint safely. A bare state_dict needs ``arch`` (and takes ``num_classes``/``in_chans``)."""
    path = Path(path)
    if num_classes is not None:  # bounded even where the file's card makes them unused: bad input is never ignored
        check_option("--num-classes", num_classes, 1, MAX_CLASSES)
    if in_chans is not None:
        check_option("--in-chans", in_chans, 1, MAX_CHANNELS)
    if not path.exists():
        raise TmdeployError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise TmdeployError(f"checkpoint path is a directory, not a file: {path}")
    try:
        if path.stat().st_size == 0:
            raise TmdeployError(f"checkpoint is empty (0 bytes): {path}")
        meta, state = _read_safetensors(path) if _is_safetensors(path) else _read_torch(path)
    except OSError as err:  # unreadable (permissions, I/O error), or removed while we read it
        raise TmdeployError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    _check_state_dict(state, path)
    if meta is None:
        if arch is None:
            raise UsageError(f"{path} is a bare state_dict without tmdeploy metadata: name its architecture with --arch")
        meta = _bare_card(state, arch, num_classes, in_chans)
    card = _card_from_dict(meta, path)
    return Checkpoint(card=card, state_dict=state, path=path, sha256=file_sha256(path))


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
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler raises this both for a pickle that names callables it will not import
        # (the reason a pickle could run code) and for a malformed one; torch lists the former without
        # running anything.
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - a pickle it cannot even scan is a damaged file
            unsafe = []
        if not unsafe:
            raise TmdeployError(f"cannot read checkpoint {path}: file is truncated or corrupt "
                                f"(its pickle is malformed)") from err
        raise TmdeployError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, "
            f"which could run code when unpickled (it calls {', '.join(unsafe)[:160]})"
        ) from err
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
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a common training-script layout: {"state_dict": ..., "epoch": ...}
    if not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise TmdeployError(f"{path} is neither a tmdeploy checkpoint nor a state_dict of tensors")
    return None, obj


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


def _card_to_dict(card: ModelCard) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tmdeploy_version": __version__,
        **asdict(card),
        "input_size": list(card.input_size),
    }


def _card_from_dict(meta: dict, path: Path) -> ModelCard:
    if not isinstance(meta, dict):
        raise TmdeployError(f"{path}: checkpoint metadata is not a mapping")
    version = meta.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise TmdeployError(f"{path}: checkpoint format version {version!r:.50} is not one this tmdeploy reads "
                            f"(1..{FORMAT_VERSION})")
    try:
        for key in ("class_names", "input_size", "mean", "std"):
            if not isinstance(meta[key], (list, tuple)):
                raise TypeError(f"{key} is a {type(meta[key]).__name__}, not a list")
        if not plain_list(meta["class_names"], (str, int)):
            raise TypeError("class_names must be strings")
        if not plain_list(meta["input_size"], int):
            raise TypeError(f"input_size must be integers, got {meta['input_size']!r:.100}")
        if not (plain_list(meta["mean"], (int, float)) and plain_list(meta["std"], (int, float))):
            raise TypeError("mean and std must be numbers")
        card = ModelCard(
            arch=str(meta["arch"]),
            arch_kwargs=dict(meta.get("arch_kwargs") or {}),
            class_names=[str(c) for c in meta["class_names"]],
            input_size=tuple(int(s) for s in meta["input_size"]),
            mean=[float(m) for m in meta["mean"]],
            std=[float(s) for s in meta["std"]],
            extra=dict(meta.get("extra") or {}),
        )
        if not all(isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))
                   for k, v in card.arch_kwargs.items()):
            raise TypeError("arch_kwargs must map option names to plain values")
    except (KeyError, TypeError, ValueError, ArithmeticError) as err:  # ArithmeticError: int(inf), float(10**400)
        raise TmdeployError(f"{path}: checkpoint metadata is incomplete or malformed "
                            f"({type(err).__name__}: {first_line(err, 160)})") from err
    if len(card.input_size) != 3 or min(card.input_size) < 1:
        raise TmdeployError(f"{path}: input_size must be three positive integers (C, H, W), got {card.input_size}")
    problem = input_size_problem(card.input_size)
    if problem:
        raise TmdeployError(f"{path}: {problem}")
    channels = card.input_size[0]
    if len(card.mean) != channels or len(card.std) != channels:
        raise TmdeployError(f"{path}: mean/std must have one value per input channel ({channels})")
    problem = normalization_problem(card.mean, card.std)  # as the float32 graph holds them, not as stored
    if problem:
        raise TmdeployError(f"{path}: {problem}")
    if not card.class_names:
        raise TmdeployError(f"{path}: checkpoint has no class names")
    for option, value in (("num_classes", card.num_classes), ("in_chans", channels)):
        declared = card.arch_kwargs.get(option, value)
        if declared != value:
            raise TmdeployError(f"{path}: checkpoint metadata implies {option}={value}, but its architecture "
                                f"options say {option}={declared!r:.50}")
    if card.arch not in models.list_models():
        raise TmdeployError(f"{path}: unknown architecture '{card.arch}'; choose one of: {', '.join(models.list_models())}")
    return card


def _bare_card(state: dict, arch: str, num_classes: int | None, in_chans: int | None) -> dict:
    """Card for a bare state_dict: classes and channels default to what the weights imply."""
    if arch not in models.list_models():
        raise UsageError(f"unknown architecture '{arch}'; choose one of: {', '.join(models.list_models())}")
    if num_classes is None:
        num_classes = _infer_num_classes(state)
    if in_chans is None:
        first_conv = next((t for t in state.values() if t.ndim == 4 and t.numel()), None)
        in_chans = int(first_conv.shape[1]) if first_conv is not None else 3
    config = models.default_config(arch)
    return {
        "arch": arch,
        "arch_kwargs": {"num_classes": int(num_classes), "in_chans": int(in_chans)},
        "class_names": [str(i) for i in range(num_classes)],
        "input_size": list(config.input_size(in_chans)),
        "mean": [config.mean] * in_chans,
        "std": [config.std] * in_chans,
        "extra": {"note": "bare state_dict: class names and normalization are placeholders"},
    }


def _infer_num_classes(state: dict) -> int:
    last_linear = [t for k, t in state.items() if k.endswith(".weight") and t.ndim == 2 and t.numel()]
    if not last_linear:
        raise UsageError("cannot tell the number of classes from this state_dict: pass --num-classes")
    return int(last_linear[-1].shape[0])
