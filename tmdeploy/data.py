"""Data sources for training, calibration and accuracy checks, named by one string.

``digits``         scikit-learn's built-in 8x8 digit images (offline), resized to the model's input
``cifar10:DIR``    a local CIFAR-10 copy, read by torchvision with downloading off
``cifar100:DIR``   likewise CIFAR-100
``folder:DIR``     an image folder (``DIR/train`` and ``DIR/val`` or ``DIR/test`` class folders: its own split;
                   or one class-folder tree, split 80/20 here)
``npz:FILE``       the user's own arrays and split (:mod:`tmdeploy.data_arrays`)

In Python, the user's data can also be given as an object where a spec is taken: arrays or samples made by
:func:`tmdeploy.data_arrays.from_arrays`, or any sized iterable of ``(image, label)`` pairs.

Every source yields images as float tensors in [0, 1] (C, H, W) and integer labels. Normalization
(mean/std per channel, measured on the training split) is kept separate: it is part of the model's card,
so that a deployed model can bake it into its graph or an application can apply it.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.values import MAX_IMAGE_BYTES, MAX_IMAGE_SIZE, check_image_memory

SOURCES = ("digits", "cifar10:DIR", "cifar100:DIR", "folder:DIR", "npz:FILE")
# The input size a source trains at when none is asked for. Digits are 8×8: at 16×16 RN26's stride-2
# stages still see 8×8 and 4×4 maps, and training costs a quarter of 32×32 with nothing lost.
DEFAULT_IMAGE_SIZES = {"digits": 16, "cifar10": 32, "cifar100": 32, "folder": 32}  # arrays: their own
NATIVE_SIZES = {"digits": 8, "cifar10": 32, "cifar100": 32}  # the images as stored; folders vary
MAX_CIFAR_FILE_BYTES = 200 << 20  # the largest real batch file, CIFAR-100's train, is 155 MB; CIFAR-10's are 31 MB


@dataclass
class DataSplit:
    train: Dataset
    test: Dataset
    class_names: list[str]
    in_chans: int
    image_size: int
    mean: list[float]
    std: list[float]
    name: str
    split_by: str = ""  # whose split the train and test parts are, for reports


def check_spec(spec) -> str:
    """The kind of a data spec ("digits", "cifar10", ..., "python" for data given as an object); UsageError for
    one that names no source."""
    if not isinstance(spec, str):
        as_source(spec)
        return "python"
    kind, sep, arg = spec.partition(":")
    if not ((kind == "digits" and not sep) or (kind in ("cifar10", "cifar100", "folder", "npz") and arg)):
        raise UsageError(f"unknown data source '{spec}'; use one of: {', '.join(SOURCES)}")
    return kind


def as_source(spec):
    """``spec`` itself when it is a spec string or the user's arrays; any other sized iterable of samples as
    arrays (:func:`tmdeploy.data_arrays.from_samples`)."""
    from tmdeploy import data_arrays

    if isinstance(spec, (str, data_arrays.UserData)):
        return spec
    return data_arrays.from_samples(spec)


def spec_text(spec) -> str:
    """How a report names the data: the spec string, or ``python:NAME`` for data given as an object."""
    return spec if isinstance(spec, str) else f"python:{as_source(spec).name}"


def check_calibration_fit(spec: str, channels: int, size: int, trained_on: str | None) -> None:
    """Refuse calibration data unlike what the model sees: other channels, or images upsampled to its size.

    Data the checkpoint was trained on always fits; its card records it.
    """
    kind = check_spec(spec)
    if kind in ("npz", "python") or spec == trained_on:  # arrays are checked against the model when loaded
        return
    native_channels = 1 if kind == "digits" else 3
    if native_channels != channels:
        raise UsageError(f"calibration data '{spec}' has {native_channels}-channel images, the model takes {channels}: "
                         f"calibrate on data like its training data ({trained_on or 'not recorded'})")
    native = NATIVE_SIZES.get(kind)
    if native is not None and native < size:
        raise UsageError(f"calibration data '{spec}' holds {native}x{native} images, the model takes {size}x{size}: "
                         f"upsampled images would calibrate it on other statistics; calibrate on data like its "
                         f"training data ({trained_on or 'not recorded'})")


def load(spec: str, image_size: int | None = None, in_chans: int | None = None, seed: int = 0) -> DataSplit:
    """Resolve a data spec (see module docstring) into train/test datasets with their statistics.

    ``image_size`` None: the source's own default (``DEFAULT_IMAGE_SIZES``)."""
    kind = check_spec(spec)
    if kind in ("npz", "python"):
        return _arrays(spec, kind, image_size, in_chans)
    arg = spec.partition(":")[2]
    image_size = image_size or DEFAULT_IMAGE_SIZES.get(kind, 32)
    if not 1 <= image_size <= MAX_IMAGE_SIZE:  # before any image is resized to it
        raise UsageError(f"image size {image_size} is out of range 1..{MAX_IMAGE_SIZE}")
    if kind == "digits":
        train, test, names, native = _digits(image_size, seed)
        split_by = f"tmdeploy's seeded stratified 80/20 split of digits (seed {seed})"
    elif kind in ("cifar10", "cifar100"):
        train, test, names, native = _cifar(kind, Path(arg), image_size)
        split_by = f"{kind.upper()}'s own train and test batches"
    else:
        train, test, names, native = _folder(Path(arg), image_size, seed)
        split_by = getattr(train, "split_by", "")
    for part, images in (("training", train), ("test", test)):
        if not len(images):
            raise TmdeployError(f"data '{spec}' gives an empty {part} split ({len(train) + len(test)} images in "
                                f"all): give it more images")
    channels = in_chans or native
    if channels not in (1, 3) or (native == 3 and channels == 1):
        raise UsageError(f"data '{spec}' has {native}-channel images; the model asks for {channels}")
    if channels != native:
        train, test = _RepeatChannels(train, channels), _RepeatChannels(test, channels)
    mean, std = channel_stats(train)
    return DataSplit(train, test, names, channels, image_size, mean, std, spec, split_by)


def _arrays(spec, kind: str, image_size: int | None, in_chans: int | None) -> DataSplit:
    from tmdeploy import data_arrays

    user = data_arrays.read_npz(Path(spec.partition(":")[2])) if kind == "npz" else as_source(spec)
    train, test, names, channels = data_arrays.datasets(user, image_size, in_chans)
    mean, std = channel_stats(train)
    return DataSplit(train, test, names, channels, int(user.images.shape[-1]), mean, std, spec_text(spec),
                     user.split_by)


def channel_stats(dataset: Dataset, limit: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over (at most ``limit``) training images, and no more than an eighth of
    ``MAX_IMAGE_BYTES`` of them (2000 images of 3x4096x4096 are 400 GB)."""
    first = dataset[0][0]
    limit = max(1, min(limit, (MAX_IMAGE_BYTES // 8) // (first.numel() * first.element_size())))
    xs = torch.stack([first, *(dataset[i][0] for i in range(1, min(len(dataset), limit)))])
    mean = xs.mean(dim=(0, 2, 3))
    std = xs.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def stack(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` samples as one image batch and one label vector (for checks and calibration)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (images - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def _digits(image_size: int, seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    check_image_memory(f"digits at {image_size}x{image_size}", len(digits.images), (1, image_size, image_size),
                       fix="they are resized up front; use a smaller --image-size")
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # 0..16 -> [0, 1]
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=digits.target
    )
    full = TensorDataset(images, labels)
    return Subset(full, train_idx.tolist()), Subset(full, test_idx.tolist()), [str(i) for i in range(10)], 1


def _cifar(kind: str, root: Path, image_size: int):
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    _check_cifar_files(cls, root)
    tf = _image_transform(image_size)
    try:
        train = cls(str(root), train=True, download=False, transform=tf)
        test = cls(str(root), train=False, download=False, transform=tf)
    except RuntimeError as err:
        folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
        raise TmdeployError(
            f"{root} does not hold the {kind.upper()} data set (expected {root / folder} from the python "
            f"version of the archive; downloading is off): {err}"
        ) from err
    return train, test, list(train.classes), 3


def _check_cifar_files(cls, root: Path) -> None:
    """Each batch file a regular file of a real batch's size, before torchvision hashes it whole (its check
    before unpickling): a FIFO, or a huge sparse file, would block or run for hours."""
    for name, _ in [*cls.train_list, *cls.test_list, (cls.meta["filename"], None)]:
        path = root / cls.base_folder / name
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # torchvision names what is missing
        except OSError as err:
            raise TmdeployError(f"cannot read {path}: {err.strerror or err}") from None
        if not stat.S_ISREG(st.st_mode):
            raise TmdeployError(f"{path} is not a regular file (a FIFO, socket or device?); refusing to read it")
        if st.st_size > MAX_CIFAR_FILE_BYTES:
            raise TmdeployError(f"{path} holds {st.st_size:,} bytes, more than any {cls.__name__} batch file "
                                f"({MAX_CIFAR_FILE_BYTES:,}); refusing to read it")


def _folder(root: Path, image_size: int, seed: int):
    from tmdeploy.data_folder import ImageFolder

    if not root.is_dir():
        raise TmdeployError(f"image folder not found: {root}")
    tf = _image_transform(image_size)
    split_dirs = [root / "train", next((root / d for d in ("val", "test") if (root / d).is_dir()), None)]
    folder = partial(ImageFolder, transform=tf, seen={})  # one listing: no image in both train and test
    try:
        if split_dirs[0].is_dir() and split_dirs[1] is not None:
            train = folder(str(split_dirs[0]))
            test = folder(str(split_dirs[1]))
            if test.classes != train.classes:
                raise TmdeployError(f"{root}: train and {split_dirs[1].name} folders have different classes")
            train.split_by = f"the folder's own train/ and {split_dirs[1].name}/ sub-folders"
        else:
            full = folder(str(root))
            order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
            cut = max(1, int(0.8 * len(order)))
            train, test = Subset(full, order[:cut]), Subset(full, order[cut:])
            train.classes = full.classes
            train.split_by = f"tmdeploy's seeded 80/20 split of the folder (seed {seed}; give train/ and test/ " \
                             f"sub-folders for your own)"
    except FileNotFoundError as err:
        raise TmdeployError(f"{root} is not an image folder with one sub-folder per class: {err}") from err
    return train, test, list(train.classes), 3


def _image_transform(image_size: int):
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize((image_size, image_size)), transforms.ToTensor()]
    )


class _RepeatChannels(Dataset):
    """Grayscale images for a model that expects RGB input."""

    def __init__(self, base: Dataset, channels: int):
        self.base, self.channels = base, channels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x.expand(self.channels, *x.shape[1:]).contiguous(), y
