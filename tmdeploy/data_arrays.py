"""The user's own data with the user's own split: ``npz:FILE``, and arrays or samples given in Python.

A model trained on its own split of a data set is judged on that split's held-out part, never on tmdeploy's
(whose test images may have been in its training set). The arrays hold:

``images`` + ``labels``              the held-out split (parity, accuracy); calibration too, unless:
``train_images`` + ``train_labels``  the training split (calibration and its statistics)
``class_names``                      optional, one string per class

Images are N×C×H×W floats on [0, 1] or N×H×W×C uint8 pixels, at the model's own input size (never resized,
so what is judged is what the model sees). An ``.npz`` file is read with ``allow_pickle=False`` and every
array's declared size is checked before it is read.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.sanitize import clean

MAX_ARRAY_BYTES = 8 << 30  # per array, declared in its header: checked before numpy allocates it
ARRAY_KEYS = ("images", "labels", "train_images", "train_labels", "class_names")


@dataclass
class UserData:
    """Held-out images and labels (and optionally a training split) the user brings, as tensors on [0, 1]."""

    images: torch.Tensor  # N×C×H×W float32 in [0, 1]
    labels: torch.Tensor  # N int64
    train_images: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    name: str = "arrays"

    @property
    def split_by(self) -> str:
        if self.train_images is None:
            return f"the user's own held-out images ({self.name}), also used for calibration"
        return f"the user's own train and held-out arrays ({self.name})"


def from_arrays(images, labels, *, train_images=None, train_labels=None, class_names=None,
                name: str = "arrays") -> UserData:
    """The user's held-out split (and training split): numpy arrays or tensors as the module docstring says."""
    test_x, test_y = _images(images, "images"), _labels(labels, "labels")
    _same_length(test_x, test_y, "images", "labels")
    train_x = train_y = None
    if (train_images is None) != (train_labels is None):
        raise UsageError("train_images and train_labels come together")
    if train_images is not None:
        train_x, train_y = _images(train_images, "train_images"), _labels(train_labels, "train_labels")
        _same_length(train_x, train_y, "train_images", "train_labels")
        if train_x.shape[1:] != test_x.shape[1:]:
            raise UsageError(f"train_images are {tuple(train_x.shape[1:])}, images {tuple(test_x.shape[1:])}")
    names = None if class_names is None else [str(c) for c in np.asarray(class_names).reshape(-1).tolist()]
    return UserData(test_x, test_y, train_x, train_y, names, name)


def from_samples(samples, name: str = "samples") -> UserData:
    """A sized iterable of ``(image, label)`` pairs, or of ``(images, labels)`` batches, as held-out data."""
    if not hasattr(samples, "__len__") or not hasattr(samples, "__iter__") and not hasattr(samples, "__getitem__"):
        raise UsageError(f"data: expected a data spec string or a sized iterable of (image, label) pairs, "
                         f"got {type(samples).__name__}")
    # a map-style torch Dataset has no __iter__: read it by index, as a DataLoader does
    items = samples if hasattr(samples, "__iter__") else (samples[i] for i in range(len(samples)))
    xs, ys = [], []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise UsageError("data: each item must be an (image, label) pair or an (images, labels) batch")
        x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in item)
        xs.append(x if x.ndim == 4 else x.unsqueeze(0))
        ys.append(y.reshape(-1))
    if not xs:
        raise UsageError("data: the iterable holds no samples")
    try:
        return from_arrays(torch.cat(xs), torch.cat(ys), name=name)
    except RuntimeError as err:  # images of several sizes
        raise UsageError(f"data: the samples do not stack into one batch ({err})") from None


def read_npz(path: Path) -> UserData:
    """The arrays in an ``.npz`` file (keys as the module docstring says), sizes checked before reading."""
    if not path.is_file():
        raise TmdeployError(f"npz data not found (or not a regular file): {path}")
    _check_declared_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = {k: arrays[k] for k in ARRAY_KEYS if k in arrays.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:  # ValueError: an object (pickled) array
        raise TmdeployError(f"cannot read {path} as numpy arrays ({type(err).__name__}: {clean(str(err))[:160]})") from err
    for key in ("images", "labels"):
        if key not in found:
            raise TmdeployError(f"{path}: no '{key}' array (it needs images and labels; it has "
                                f"{', '.join(sorted(found)) or 'none of them'})")
    return from_arrays(found["images"], found["labels"], train_images=found.get("train_images"),
                       train_labels=found.get("train_labels"), class_names=found.get("class_names"), name=path.name)


def datasets(user: UserData, image_size: int | None, in_chans: int | None):
    """(train, test, class names, channels) of ``user`` for a model taking ``in_chans``×``image_size``²."""
    channels, height, width = user.images.shape[1:]
    if image_size is not None and (height, width) != (image_size, image_size):
        raise UsageError(f"data {user.name}: images are {height}x{width}, the model takes {image_size}x{image_size}; "
                         f"give them at the model's input size")
    if in_chans is not None and channels != in_chans:
        raise UsageError(f"data {user.name}: images have {channels} channels, the model takes {in_chans}")
    count = int(max(user.labels.max(), user.train_labels.max() if user.train_labels is not None else -1)) + 1
    names = user.class_names or [str(i) for i in range(count)]
    if len(names) < count:
        raise UsageError(f"data {user.name}: labels go up to {count - 1}, but {len(names)} class names are given")
    test = TensorDataset(user.images, user.labels)
    train = test if user.train_images is None else TensorDataset(user.train_images, user.train_labels)
    return train, test, names, int(channels)


def _images(value, what: str) -> torch.Tensor:
    x = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    if x.ndim != 4 or not len(x):
        raise UsageError(f"{what}: expected N×C×H×W floats or N×H×W×C uint8 pixels, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).float().div(255.0).contiguous()
    if not x.is_floating_point():
        raise UsageError(f"{what}: expected float images on [0, 1] or uint8 pixels, got {x.dtype}")
    x = x.float()
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise UsageError(f"{what}: float images must be finite and on [0, 1] (uint8 pixels are scaled here)")
    return x.contiguous()


def _labels(value, what: str) -> torch.Tensor:
    y = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UsageError(f"{what}: expected a vector of integer class indices, got {y.dtype} {tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise UsageError(f"{what}: class indices must not be negative")
    return y.long()


def _same_length(x: torch.Tensor, y: torch.Tensor, xs: str, ys: str) -> None:
    if len(x) != len(y):
        raise UsageError(f"{len(x)} {xs} but {len(y)} {ys}")


def _check_declared_sizes(path: Path) -> None:
    """Every member's npy header read (not its data): its declared size bounded, and no object array."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f"npy format {version} (tmdeploy reads 1.0 and 2.0)")
                    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = reader(member)
                if dtype.hasobject:
                    raise TmdeployError(f"{path}: array '{clean(info.filename)[:60]}' holds Python objects, "
                                        f"which would be unpickled; refusing to read it")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if nbytes > MAX_ARRAY_BYTES:
                    raise TmdeployError(f"{path}: array '{clean(info.filename)[:60]}' declares {nbytes:,} bytes, "
                                        f"more than tmdeploy reads ({MAX_ARRAY_BYTES:,})")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise TmdeployError(f"cannot read {path} as an .npz file ({type(err).__name__}: {clean(str(err))[:160]})") from err
