"""``--arch SPEC``: the code that builds the user's own model, named by the person running the command.

SPEC is a registered name, ``path/to/file.py:FUNCTION`` or ``package.module:FUNCTION``; FUNCTION (a function
or an ``nn.Module`` class) returns the module and is passed ``num_classes=`` and ``in_chans=`` where its
signature names them (through ``**kwargs`` only ``num_classes=``, torchvision's convention). Importing runs the
named file's code, which is why only a SPEC from the command line or the Python API is ever imported: a name
read from a checkpoint is looked up in the registry and nowhere else (:mod:`.zoo`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.sanitize import clean


def is_code_spec(spec: str) -> bool:
    """Whether ``spec`` names code (``FILE.py:FUNCTION``, ``package.module:FUNCTION``), not a registered name."""
    return ":" in spec


def resolve(spec: str) -> Callable[..., nn.Module]:
    """The callable ``spec`` names, its module imported (a file by path, a package by name)."""
    where, _, name = spec.rpartition(":")
    shown = clean(spec)[:200]
    if not where or not all(part.isidentifier() for part in name.split(".")):
        raise UsageError(f"--arch {shown}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    module = _import_file(Path(where), shown) if where.endswith(".py") or "/" in where else _import_module(where, shown)
    target = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise UsageError(f"--arch {shown}: {clean(where)[:100]} has no '{clean(part)[:60]}'")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"--arch {shown}: '{clean(name)[:60]}' is a {type(target).__name__}, not a function or class")
    return target


def build(spec: str, num_classes: int | None, in_chans: int | None,
          infer: Callable[[str], int]) -> nn.Module:
    """Call what ``spec`` names with the size options its signature takes; ``infer(option)`` supplies one that
    was not given (read off the weights)."""
    factory = resolve(spec)
    kwargs = {}
    for option, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if _takes(factory, option, through_kwargs=option == "num_classes"):
            kwargs[option] = infer(option) if value is None else value
    shown = clean(spec)[:200]
    try:
        module = factory(**kwargs)
    except Exception as err:  # noqa: BLE001 - the user's code: any failure is theirs to read, in one line
        raise TmdeployError(f"--arch {shown}: building the model failed ({type(err).__name__}: "
                            f"{clean(first_line(err, 200))})") from err
    if not isinstance(module, nn.Module):
        raise TmdeployError(f"--arch {shown}: it returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _takes(factory: Callable, option: str, through_kwargs: bool) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing
        return False
    if option in params and params[option].kind is not inspect.Parameter.POSITIONAL_ONLY:
        return True
    return through_kwargs and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _import_file(path: Path, shown: str):
    if not path.is_file():
        raise UsageError(f"--arch {shown}: {clean(str(path))[:200]} is not a file")
    name = "tmdeploy_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # the file's own folder first, so it can import the modules beside it, as it does when run from there
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # a script that calls sys.exit() on import fails like any other
        del sys.modules[name]
        raise TmdeployError(f"--arch {shown}: importing {clean(str(path))[:100]} failed ({type(err).__name__}: "
                            f"{clean(first_line(err, 200))})") from err
    return module


def _import_module(name: str, shown: str):
    if not all(part.isidentifier() for part in name.split(".")):
        raise UsageError(f"--arch {shown}: '{clean(name)[:100]}' is not a module name")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise UsageError(f"--arch {shown}: no module named '{clean(err.name or name)[:100]}'") from err
    except Exception as err:  # noqa: BLE001 - the user's package failed while importing
        raise TmdeployError(f"--arch {shown}: importing {clean(name)[:100]} failed ({type(err).__name__}: "
                            f"{clean(first_line(err, 200))})") from err
