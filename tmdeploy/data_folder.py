"""``folder:DIR`` image folders: torchvision's ImageFolder, with what it does not check checked.

- Links are followed, but every real directory and every image file is read once: torchvision's walk
  (``os.walk(followlinks=True)``) loops on ``DIR/cat/a -> .``, many times over before the path gets too
  long, so one loop link turned 10 images into 210 and a few hung the listing; a second link to a
  folder put the same images in two classes, or in both the train and the test split.
- Every image file is a regular file that decodes, checked when the folder is listed.
- 16-bit images are scaled by their real depth: PIL's ``convert("RGB")`` clips 16-bit values at 255, so
  every pixel above 255/65535 became white.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from tmdeploy.errors import TmdeployError, first_line

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL's modes for 16-bit single-channel pixels


class ImageFolder(datasets.ImageFolder):
    """ImageFolder whose listing reads each real folder and file once (``seen`` shared by a train/test pair)."""

    def __init__(self, root, transform, seen: dict | None = None) -> None:
        self.seen = {} if seen is None else seen
        super().__init__(str(root), transform=transform, loader=load_image, is_valid_file=checked_image_file)

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        samples, found = [], set()
        for name in sorted(class_to_idx):
            for path in _files_once(Path(directory, name), self.seen):
                if is_valid_file(path):
                    samples.append((path, class_to_idx[name]))
                    found.add(name)
        empty = sorted(set(class_to_idx) - found)
        if empty and not allow_empty:  # what torchvision raises, which the data loader reports
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return samples


def _files_once(top: Path, seen: dict) -> list[str]:
    """The files under ``top``, links followed, depth first in name order as torchvision lists them; a
    directory or a file reached a second time (a link loop, or two paths to the same images) is refused."""
    files, stack = [], [str(top)]
    while stack:
        folder = stack.pop()
        _once(folder, seen, "folder")
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise TmdeployError(f"cannot read the image folder {folder}: {err.strerror or err}") from None
        dirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(entry.path)
            elif has_file_allowed_extension(entry.path, IMG_EXTENSIONS) and os.path.exists(entry.path):
                _once(entry.path, seen, "image")
                files.append(entry.path)
            else:
                files.append(entry.path)  # checked_image_file judges it (a broken link, another file type)
        stack.extend(reversed(dirs))
    return files


def _once(path: str, seen: dict, what: str) -> None:
    try:
        st = os.stat(path)
    except OSError as err:
        raise TmdeployError(f"cannot read {path}: {err.strerror or err}") from None
    key = (what, st.st_dev, st.st_ino)
    if key in seen:
        raise TmdeployError(f"{path} is the {what} {seen[key]} again (a link loop, or a second link to it): its "
                            f"images would be read twice; remove the link")
    seen[key] = path


def checked_image_file(path: str) -> bool:
    """ImageFolder's file filter: image names only, and each one a regular file that decodes.

    Checked when the folder is listed, before training starts: a FIFO named ``x.png`` would block the
    first read forever, and a corrupt image would fail an epoch half-way through.
    """
    if not has_file_allowed_extension(path, IMG_EXTENSIONS):
        return False
    if not os.path.isfile(path):  # follows links; False for FIFOs, sockets, devices
        raise TmdeployError(f"{path} is not a regular file (a FIFO, socket or device?); refusing to read it")
    try:
        with Image.open(path) as image:
            mode = image.mode
            image.verify()
    except Exception as err:  # PIL raises UnidentifiedImageError, SyntaxError, OSError, DecompressionBombError...
        raise TmdeployError(f"{path} is not a readable image ({_reason(err)}): remove or replace it") from None
    if mode in ("I", "F"):  # no depth to scale by: 0..2^32-1 or any float
        raise TmdeployError(f"{path} has 32-bit {'float' if mode == 'F' else 'integer'} pixels; tmdeploy reads "
                            f"8- and 16-bit images")
    return True


def load_image(path: str):
    """Decode one image as 8-bit RGB, 16-bit pixels scaled by their depth; a fault the listing's check could
    not see (data cut short) names the file."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in SIXTEEN_BIT_MODES:
                pixels = np.asarray(image).astype(np.uint32)
                image = Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8), "L")
            return image.convert("RGB")
    except Exception as err:
        raise TmdeployError(f"{path} is not a readable image ({_reason(err)}): remove or replace it") from None


def _reason(err: Exception) -> str:
    return first_line(err, 160) or type(err).__name__
