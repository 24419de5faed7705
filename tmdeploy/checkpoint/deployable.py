"""A model to deploy: a module and its card. Every stage (export, check, bench, optimize, Triton) takes one.

There are three ways to make one:

- :func:`from_module`: any trained ``nn.Module`` in Python, with the card's fields given;
- :func:`load_model`: a file, as the command line opens it: a tmdeploy checkpoint, a bare state_dict with
  ``arch`` (a registered name, or the user's code as ``FILE.py:FUNCTION`` / ``package.module:FUNCTION``), or a
  ``torch.export`` program (``.pt2``), which needs no code at all;
- :func:`as_deployable` on a zoo :class:`~tmdeploy.checkpoint.zoo.Checkpoint`.

What cannot be read off the weights or the program (the input size of a module, the normalization) comes from
the caller; where it is missing, the error names the option that gives it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from tmdeploy.checkpoint import user_code, zoo
from tmdeploy.checkpoint.card import ModelCard, card_from_dict, check_card
from tmdeploy.checkpoint.files import RawCheckpoint, check_finite, check_readable, is_program, read
from tmdeploy.checkpoint.program import load_program
from tmdeploy.checkpoint.weights import load_weights
from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.fileio import file_sha256
from tmdeploy.sanitize import clean
from tmdeploy.values import MAX_CLASSES, check_option

IDENTITY_NOTE = "no --mean/--std given: the model takes images on the [0, 1] scale (mean 0, std 1)"


@dataclass
class Deployable:
    """A trained model and what its exported files say about it (input size, class names, mean/std)."""

    module: nn.Module
    card: ModelCard
    path: Path | None = None  # the file it came from: default outputs go beside it, and no output may replace it
    sha256: str | None = None
    # the one exporter that can export it, whatever ExportOptions.exporter says: a torch.export program's
    # sizes are ops in its graph, which the TorchScript tracer would record as the traced batch's constants
    exporter: str | None = None

    def copy_module(self) -> nn.Module:
        """A float32 copy in eval mode, on the CPU: each stage casts, moves or rewrites its own."""
        return copy.deepcopy(self.module).float().cpu().eval()

    @property
    def has_patch_logits(self) -> bool:
        return bool(getattr(self.module, "has_patch_logits", False))


def from_module(model: nn.Module, *, input_size, class_names, mean=None, std=None) -> Deployable:
    """``model`` (trained, any architecture) with its card: ``input_size`` (C, H, W), ``class_names``, and the
    ``mean``/``std`` its inputs are normalized with on the [0, 1] scale (None: it takes [0, 1] images)."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"from_module takes a torch.nn.Module, got {type(model).__name__}")
    arch = f"{type(model).__module__}.{type(model).__qualname__}"
    return _user_deployable(copy.deepcopy(model).float().cpu().eval(), arch, None, None,
                            input_size=input_size, class_names=class_names, mean=mean, std=std)


def as_deployable(model) -> Deployable:
    """``model`` as a Deployable: itself, or a zoo Checkpoint's module (built once) and card."""
    if isinstance(model, Deployable):
        return model
    if isinstance(model, zoo.Checkpoint):
        return Deployable(model.build_model(), model.card, model.path, model.sha256)
    if isinstance(model, nn.Module):
        raise UsageError("a bare nn.Module has no card: wrap it with tmdeploy.from_module(model, input_size=..., "
                         "class_names=...)")
    raise UsageError(f"expected a Deployable (tmdeploy.from_module, checkpoint.load_model), got {type(model).__name__}")


def load_model(path, *, arch: str | None = None, num_classes: int | None = None, in_chans: int | None = None,
               input_size=None, class_names=None, mean=None, std=None) -> Deployable:
    """Open the model in ``path`` as the command line does (see the module docstring). The card's fields given
    here fill what the file lacks; where the file's card has them, they must agree with it."""
    path = Path(path)
    zoo.check_size_options(num_classes, in_chans)
    given = {"input_size": input_size, "class_names": class_names, "mean": mean, "std": std}
    check_readable(path)
    if is_program(path):
        if arch is not None:
            raise UsageError(f"--arch: {path} is a torch.export program, which carries its own graph")
        module, size = load_program(path)
        _check_agrees("--input-size", input_size, size, f"the program {path.name} takes")
        program = _user_deployable(module, f"torch.export:{path.name}", path, file_sha256(path),
                                   num_classes=num_classes, **{**given, "input_size": size})
        return replace(program, exporter="dynamo")
    raw = read(path)
    check_finite(raw.state_dict)  # as stored: a float64 1e300 turns Inf only in the float32 module
    if arch is not None and user_code.is_code_spec(arch):
        return _from_code(raw, arch, num_classes, in_chans, given)
    ckpt = zoo.from_raw(raw, arch, num_classes, in_chans)
    card = _with_given(ckpt.card, given, from_file=raw.meta is not None)
    return Deployable(ckpt.build_model(), card, raw.path, raw.sha256)


def _from_code(raw: RawCheckpoint, spec: str, num_classes, in_chans, given: dict) -> Deployable:
    """The user's own code, named by ``--arch FILE.py:FUNCTION``, with the file's weights loaded."""
    card = card_from_dict(raw.meta, str(raw.path)) if raw.meta is not None else None
    known = {"num_classes": num_classes or (card.num_classes if card else None),
             "in_chans": in_chans or (card.input_size[0] if card else None)}

    def infer(option: str) -> int:
        infer_from = zoo.infer_num_classes if option == "num_classes" else zoo.infer_in_chans
        return known[option] or infer_from(raw.state_dict)

    module = user_code.build(spec, known["num_classes"], known["in_chans"], infer)
    load_weights(module, raw.state_dict, clean(spec)[:200], TmdeployError)
    if card is not None:
        return Deployable(module.float().eval(), _with_given(replace(card, arch=spec), given, from_file=True),
                          raw.path, raw.sha256)
    return _user_deployable(module.float().eval(), spec, raw.path, raw.sha256, num_classes=num_classes, **given)


def _user_deployable(module: nn.Module, arch: str, path, sha256, *, input_size, class_names, mean, std,
                     num_classes: int | None = None) -> Deployable:
    """The card of a module that came without one, from what was given and what one forward pass shows."""
    if input_size is None:
        raise UsageError("the input size cannot be read off the weights: pass --input-size C,H,W "
                         "(input_size=(C, H, W) in Python)")
    size = _int_triple(input_size)
    classes = _classes_of(module, size)
    if class_names is None:
        class_names = [str(i) for i in range(num_classes or classes)]
    names = [str(c) for c in class_names]
    if len(names) != classes:
        raise UsageError(f"{len(names)} class names given, but the model's logits have {classes} classes")
    channels = size[0]
    note = {} if mean is not None or std is not None else {"note": IDENTITY_NOTE}
    card = ModelCard(arch=arch, arch_kwargs={}, class_names=names, input_size=size,
                     mean=_floats(mean, channels, 0.0, "--mean"), std=_floats(std, channels, 1.0, "--std"), extra=note)
    return Deployable(module, check_card(card), Path(path) if path else None, sha256)


def _with_given(card: ModelCard, given: dict, from_file: bool) -> ModelCard:
    """``card`` with the given fields: checked to agree with a card read from a file, filling a placeholder card."""
    channels = card.input_size[0]
    values = {"input_size": None if given["input_size"] is None else _int_triple(given["input_size"]),
              "class_names": None if given["class_names"] is None else [str(c) for c in given["class_names"]],
              "mean": None if given["mean"] is None else _floats(given["mean"], channels, None, "--mean"),
              "std": None if given["std"] is None else _floats(given["std"], channels, None, "--std")}
    values = {k: v for k, v in values.items() if v is not None}
    if from_file:
        for field, value in values.items():
            flag = "--" + field.replace("_", "-")
            _check_agrees(flag, value, getattr(card, field), "the checkpoint's card says")
        return card
    if "class_names" in values and len(values["class_names"]) != card.num_classes:
        raise UsageError(f"--class-names: {len(values['class_names'])} names, the weights have {card.num_classes} "
                         f"classes")
    if "input_size" in values and values["input_size"][0] != channels:
        raise UsageError(f"--input-size: {values['input_size'][0]} channels, the weights take {channels}")
    extra = dict(card.extra)
    if {"mean", "std", "class_names"} <= set(values):
        extra.pop("note", None)  # nothing left of the placeholders
    return check_card(replace(card, **values, extra=extra))


def _check_agrees(flag: str, given, actual, what: str) -> None:
    if given is not None and list(given) != list(actual):
        raise UsageError(f"{flag} {','.join(map(str, given))[:100]} disagrees with what {what} "
                         f"({clean(','.join(map(str, actual)))[:100]}); drop {flag}")


def _classes_of(module: nn.Module, size: tuple[int, int, int]) -> int:
    """The number of classes in the module's logits, from one forward pass on a zero image."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *size))
    except Exception as err:  # noqa: BLE001 - the user's module: its failure names the size it was given
        raise TmdeployError(f"the model does not run on images of size {','.join(map(str, size))} "
                            f"(--input-size): {type(err).__name__}: {clean(first_line(err, 200))}") from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        what = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise TmdeployError(f"the model returns {what}; tmdeploy deploys a classifier whose forward returns "
                            f"logits of shape (N, classes)")
    check_option("classes", int(out.shape[1]), 1, MAX_CLASSES)
    return int(out.shape[1])


def _int_triple(value) -> tuple[int, int, int]:
    values = tuple(value)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UsageError(f"--input-size takes three integers C,H,W, got {clean(str(value))[:60]}")
    return values


def _floats(value, channels: int, default: float | None, flag: str) -> list[float]:
    """Per-channel values: one number for every channel, or one per channel."""
    if value is None:
        return [default] * channels
    values = [float(v) for v in value]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise UsageError(f"{flag} takes one value or one per input channel ({channels}), got {len(values)}")
    return values
