"""Arguments and loaders shared by several commands, and options bound to the Python API.

An option bound to the API (:func:`api_option`) has argparse default None, so an option not given on the
command line is left to the API; its help shows the API's own default, read from the options dataclass
(or function) when help is printed, so the defaults live once, in the API. Its choices are shown, and
checked by the options' ``validate()`` with everything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
from pathlib import Path

from tmdeploy.errors import UsageError


def add_checkpoint_args(p) -> None:
    p.add_argument("checkpoint", type=Path, help="the model: a checkpoint (.pt, .safetensors) written by tmdeploy "
                   "train, a bare state_dict with --arch, or a torch.export program (.pt2)")
    g = p.add_argument_group("your own model (a bare state_dict or a .pt2 program: what its file does not say)")
    g.add_argument("--arch", default=None, help="what builds a bare state_dict: a registered architecture, "
                   "FILE.py:FUNCTION or package.module:FUNCTION (imported: your code runs)")
    g.add_argument("--num-classes", type=int, default=None, help="classes (default: read off the weights)")
    g.add_argument("--class-names", type=Path, default=None, help="file of class names, one a line")
    g.add_argument("--in-chans", type=int, default=None, help="input channels (default: read off the weights)")
    g.add_argument("--input-size", default=None, help="C,H,W of the images the model takes")
    g.add_argument("--mean", default=None, help="per-channel mean on the [0, 1] scale, comma-separated "
                   "(default: none, the model takes [0, 1] images)")
    g.add_argument("--std", default=None, help="per-channel std on the [0, 1] scale, comma-separated")


def load_checkpoint(args):
    """The model the command deploys (a Deployable), from the checkpoint argument and the model options."""
    from tmdeploy import checkpoint

    return checkpoint.load_model(
        args.checkpoint, arch=args.arch, num_classes=args.num_classes, in_chans=args.in_chans,
        input_size=None if args.input_size is None else int_list(args.input_size, "--input-size"),
        class_names=None if args.class_names is None else read_class_names(args.class_names),
        mean=None if args.mean is None else float_list(args.mean, "--mean"),
        std=None if args.std is None else float_list(args.std, "--std"))


def read_class_names(path: Path) -> list[str]:
    """One class name a line (blank lines skipped), bounded before it is read whole."""
    from tmdeploy.values import MAX_CLASSES

    try:
        if not path.is_file():
            raise UsageError(f"--class-names {path}: not a regular file")
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CLASSES * 256 + 1)
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--class-names {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if len(text) > MAX_CLASSES * 256:
        raise UsageError(f"--class-names {path}: more than {MAX_CLASSES * 256} characters")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UsageError(f"--class-names {path}: no names in it")
    return names


def float_list(text: str, option: str) -> tuple[float, ...]:
    """Parse "0.5,0.25" into floats, or say which option was malformed."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers, got '{text}'") from None


def int_list(text: str, option: str) -> tuple[int, ...]:
    """Parse "1,32,256" into integers, or say which option was malformed."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{option} takes positive integers, got '{text}'")
    return values


def api_option(container, flag: str, source: str, field: str | None = None, *, help: str, shown: str | None = None,
               **kwargs) -> argparse.Action:
    """Add ``flag`` bound to ``field`` of ``source`` ("module:Name", a dataclass or a function).

    ``shown`` describes a default that is not a plain value (None meaning "the data's own", say).
    """
    field = field or flag.lstrip("-").replace("-", "_")
    action = container.add_argument(flag, dest=field, default=None, help=help, **kwargs)
    action.api = (source, field, shown)
    return action


def api_default(source: str, field: str):
    """The default of ``field`` in ``source`` ("module:Name"), imported only when asked for."""
    module, _, name = source.partition(":")
    obj = getattr(importlib.import_module(module), name)
    if dataclasses.is_dataclass(obj):
        spec = next(f for f in dataclasses.fields(obj) if f.name == field)
        return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    return inspect.signature(obj).parameters[field].default


def show(value) -> str:
    """A default as a user would type it."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


class HelpFormatter(argparse.HelpFormatter):
    """Appends the API's default to the help of every option bound to it."""

    def _get_help_string(self, action) -> str:
        api = getattr(action, "api", None)
        if api is None or action.help is None:
            return action.help
        source, field, shown = api
        default = shown if shown is not None else show(api_default(source, field))
        return f"{action.help} (default: {default.replace('%', '%%')})"


def api_values(args, cls, **convert) -> dict:
    """The fields of ``cls`` given on the command line, converted where ``convert`` says (field → function)."""
    values = {}
    for spec in dataclasses.fields(cls):
        value = getattr(args, spec.name, None)
        if value is not None:
            values[spec.name] = convert[spec.name](value) if spec.name in convert else value
    return values


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())
