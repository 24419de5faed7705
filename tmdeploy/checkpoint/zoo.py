"""Checkpoints of tmdeploy's own architectures (``tmdeploy train``, or a bare state_dict with ``--arch NAME``).

The architecture is rebuilt from the registry by name. A name read from a file is only ever looked up
there, never imported: a card whose ``arch`` is ``os:system`` is an unknown architecture, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tmdeploy import models
from tmdeploy.checkpoint.card import ModelCard, card_from_dict
from tmdeploy.checkpoint.files import RawCheckpoint, read
from tmdeploy.checkpoint.weights import fit_state_dict
from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.sanitize import clean
from tmdeploy.values import MAX_CHANNELS, MAX_CLASSES, check_option

BARE_NOTE = "bare state_dict: class names and normalization are placeholders"


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
        state = fit_state_dict(self.state_dict, skeleton.state_dict(), self.card.arch, TmdeployError)
        model = models.create(self.card.arch, **self.card.arch_kwargs)
        model.load_state_dict(state)
        return model.eval()


def check_size_options(num_classes: int | None, in_chans: int | None) -> None:
    """Bounded even where the file's card makes them unused: bad input is never ignored."""
    if num_classes is not None:
        check_option("--num-classes", num_classes, 1, MAX_CLASSES)
    if in_chans is not None:
        check_option("--in-chans", in_chans, 1, MAX_CHANNELS)


def load(path, arch: str | None = None, num_classes: int | None = None, in_chans: int | None = None) -> Checkpoint:
    """Load a checkpoint safely. A bare state_dict needs ``arch`` (and takes ``num_classes``/``in_chans``)."""
    check_size_options(num_classes, in_chans)
    return from_raw(read(path), arch, num_classes, in_chans)


def from_raw(raw: RawCheckpoint, arch: str | None, num_classes: int | None = None,
             in_chans: int | None = None) -> Checkpoint:
    """The zoo checkpoint a file read by :func:`~tmdeploy.checkpoint.files.read` holds."""
    meta = raw.meta
    if meta is None:
        if arch is None:
            raise UsageError(f"{raw.path} is a bare state_dict without tmdeploy metadata: name its architecture "
                             f"with --arch")
        meta = bare_card(raw.state_dict, arch, num_classes, in_chans)
    card = card_from_dict(meta, str(raw.path))
    if card.arch not in models.list_models():
        raise TmdeployError(f"{raw.path}: unknown architecture '{clean(card.arch)[:100]}'; choose one of: "
                            f"{', '.join(models.list_models())} (or name the code that builds it with "
                            f"--arch FILE.py:FUNCTION)")
    return Checkpoint(card=card, state_dict=raw.state_dict, path=raw.path, sha256=raw.sha256)


def bare_card(state: dict, arch: str, num_classes: int | None, in_chans: int | None) -> dict:
    """Card for a bare state_dict: classes and channels default to what the weights imply."""
    if arch not in models.list_models():
        raise UsageError(f"unknown architecture '{arch}'; choose one of: {', '.join(models.list_models())} "
                         f"(or your own code: --arch FILE.py:FUNCTION or package.module:FUNCTION)")
    num_classes = infer_num_classes(state) if num_classes is None else num_classes
    in_chans = infer_in_chans(state) if in_chans is None else in_chans
    config = models.default_config(arch)
    return {
        "arch": arch,
        "arch_kwargs": {"num_classes": int(num_classes), "in_chans": int(in_chans)},
        "class_names": [str(i) for i in range(num_classes)],
        "input_size": list(config.input_size(in_chans)),
        "mean": [config.mean] * in_chans,
        "std": [config.std] * in_chans,
        "extra": {"note": BARE_NOTE},
    }


def infer_num_classes(state: dict) -> int:
    """The rows of the last 2-D weight: the classifier's classes, in a state_dict saved in module order."""
    last_linear = [t for k, t in state.items() if k.endswith(".weight") and t.ndim == 2 and t.numel()]
    if not last_linear:
        raise UsageError("cannot tell the number of classes from this state_dict: pass --num-classes")
    return int(last_linear[-1].shape[0])


def infer_in_chans(state: dict) -> int:
    """The input channels of the first 4-D weight: the stem convolution's, in module order (3 if none)."""
    first_conv = next((t for t in state.values() if t.ndim == 4 and t.numel()), None)
    return int(first_conv.shape[1]) if first_conv is not None else 3
