"""``torch.export`` programs (``.pt2``, from ``torch.export.save``): a model that carries its own graph.

``torch.export.load`` warns that it "uses pickle under the hood": it unpickles weights and constants marked
``use_pickle`` (with ``weights_only=False``), falls back to a full unpickle of the sample inputs when the safe
one fails, loads AOTInductor shared libraries, evaluates every symbolic-shape expression with
``sympy.sympify`` (Python's ``eval``), resolves node targets by attribute lookup under ``torch``, and compiles
the program's ``guards_code`` strings into Python when the module is made with its guards. So the archive is
read here first, from one copy of its bytes, and refused unless nothing in it can run code:

- no AOTInductor files, no legacy (pickled) weight files, no payload with ``use_pickle``, no custom or opaque
  object constants;
- sample inputs that ``torch.load(weights_only=True)`` opens (so torch's own fallback never runs);
- every graph node's target an ATen operator (``torch.ops.aten.*``) or one of a few ``operator`` functions on
  sizes, and every symbolic expression made of sympy's integer arithmetic on symbol names only;

then ``torch.export.load`` reads those same bytes, and the module is taken with ``check_guards=False``, so no
``guards_code`` string is ever compiled. ``tests/test_user_models.py`` holds one hostile archive per rule.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from tmdeploy.errors import TmdeployError, first_line
from tmdeploy.sanitize import clean

MAX_PROGRAM_BYTES = 4 << 30  # read whole into memory, once: the bytes checked are the bytes loaded
SIZE_OPERATORS = {"getitem", "add", "sub", "mul", "floordiv", "truediv", "neg", "mod", "eq", "ne", "lt", "le",
                  "gt", "ge", "pow"}  # Python's operator functions torch.export records on sizes
# sympy's srepr of shape expressions: these names, quoted symbol names, numbers and punctuation, nothing else
SYMPY_NAMES = {"Symbol", "Integer", "Rational", "Add", "Mul", "Pow", "Max", "Min", "FloorDiv", "CeilToInt",
               "FloorToInt", "TruncToInt", "Mod", "PythonMod", "CleanDiv", "IntTrueDiv", "Abs", "True", "False",
               "positive", "integer", "nonnegative", "negative", "real", "finite", "oo", "int_oo", "nan"}
_TOKENS = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<symbol>'[a-z]+[0-9]*')|(?P<number>-?[0-9]+)"
                     r"|(?P<punct>[(),=+\-*/]))")


def load_program(path: Path) -> tuple[nn.Module, tuple[int, int, int]]:
    """The module of the program in ``path`` and the C, H, W of the images it takes, checked as the module
    docstring says; TmdeployError otherwise."""
    content = _read(path)
    _check_archive(content, path)
    try:
        with warnings.catch_warnings(), _quiet_torch_logs():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(content))
            module = ProgramModule(program.module(check_guards=False))
    except Exception as err:  # noqa: BLE001 - checked safe above: any failure now is a damaged or newer file
        raise TmdeployError(f"cannot load the torch.export program {path} ({type(err).__name__}: "
                            f"{clean(first_line(err, 200))}); was it saved by this torch ({torch.__version__})?") from err
    return module, _image_size(program, path)


class ProgramModule(nn.Module):
    """A program's graph module, whose train or eval mode was fixed when it was exported (it refuses both)."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, images):
        return self.graph_module(images)

    def train(self, mode: bool = True) -> "ProgramModule":
        self.training = mode  # not passed down: the graph's mode is its own
        return self


def _image_size(program, path: Path) -> tuple[int, int, int]:
    """C, H, W of the program's one image input, whose batch axis must be dynamic."""
    names = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    if len(names) != 1 or not isinstance(nodes.get(names[0]) and nodes[names[0]].meta.get("val"), torch.Tensor):
        raise TmdeployError(f"{path}: the program takes {len(names)} inputs; tmdeploy deploys a model that takes "
                            f"one image batch (N, C, H, W)")
    shape = nodes[names[0]].meta["val"].shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise TmdeployError(f"{path}: the program's input has shape {tuple(map(str, shape))}; tmdeploy deploys a "
                            f"model that takes (N, C, H, W) images of one size")
    if isinstance(shape[0], int):
        raise TmdeployError(f"{path}: the program was exported for batches of {shape[0]} only; export it with a "
                            f"dynamic batch: torch.export.export(model, (x,), "
                            f"dynamic_shapes=({{0: torch.export.Dim('batch')}},))")
    return tuple(int(d) for d in shape[1:])


def _read(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_PROGRAM_BYTES:
        raise TmdeployError(f"{path}: {size / 2**30:.1f} GiB is more than tmdeploy reads as a program "
                            f"({MAX_PROGRAM_BYTES >> 30} GiB)")
    with open(path, "rb") as f:
        return f.read(MAX_PROGRAM_BYTES + 1)


def _check_archive(content: bytes, path: Path) -> None:
    refuse = _refuser(path)
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, EOFError) as err:
        raise TmdeployError(f"{path}: the torch.export program is truncated or corrupt ({err})") from err
    parts = {name.split("/", 1)[-1]: name for name in names if "/" in name}
    for part in parts:
        if part.startswith("data/aotinductor/"):
            refuse("it holds AOTInductor compiled code (data/aotinductor/)")
        if part.startswith(("data/weights/", "data/constants/")) and part.endswith(".pt"):
            refuse(f"it holds pickled weights ({part}, the legacy format); save it again with this torch")
    models = [p for p in parts if p.startswith("models/") and p.endswith(".json")]
    if not models:
        refuse("it holds no program (models/*.json)")
    for part in models:
        model = part[len("models/"):-len(".json")]
        program = _json(archive, parts[part], refuse)
        _check_graph(program, refuse)
        for config in (f"data/weights/{model}_weights_config.json", f"data/constants/{model}_constants_config.json"):
            if config in parts:
                _check_payloads(_json(archive, parts[config], refuse), config, refuse)
        sample = parts.get(f"data/sample_inputs/{model}.pt")
        if sample is not None:
            try:
                with warnings.catch_warnings():  # the weights-only unpickler's note on pickle protocols
                    warnings.simplefilter("ignore")
                    torch.load(io.BytesIO(archive.read(sample)), weights_only=True)
            except Exception as err:  # noqa: BLE001 - what weights_only refuses, torch.export.load would unpickle
                refuse(f"its sample inputs are not plain tensors ({type(err).__name__})")


def _refuser(path: Path):
    def refuse(why: str):
        raise TmdeployError(f"refusing to load {path}: {why}; tmdeploy loads only programs of ATen operators and "
                            f"plain tensors, which cannot run code")

    return refuse


def _json(archive: zipfile.ZipFile, name: str, refuse):
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError, zipfile.BadZipFile) as err:
        refuse(f"{name} is not valid JSON ({type(err).__name__})")


def _check_payloads(config, name: str, refuse) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        refuse(f"{name} is malformed")
    for fqn, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            refuse(f"'{clean(str(fqn))[:80]}' in {name} is pickled")
        if "constants" in name and not str(entry.get("path_name", "")).startswith("tensor_"):
            refuse(f"'{clean(str(fqn))[:80]}' in {name} is a custom object, not a tensor")


def _check_graph(program, refuse) -> None:
    """Every node target and symbolic expression anywhere in the program (subgraphs included)."""
    for key, value in _walk(program):
        if key == "target":
            if not _allowed_target(value):
                refuse(f"a node calls '{clean(str(value))[:100]}', which is not an ATen operator")
        elif key == "expr_str":
            if not _plain_expression(value):
                refuse(f"a symbolic shape expression '{clean(str(value))[:100]}' is not plain integer arithmetic")


def _walk(obj):
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _allowed_target(target) -> bool:
    if not isinstance(target, str):
        return False
    if target.startswith("torch.ops.aten."):
        return all(part.isidentifier() for part in target.split(".")[3:])
    module, _, name = target.partition(".")
    return module == "_operator" and name in SIZE_OPERATORS


def _plain_expression(text) -> bool:
    if not isinstance(text, str) or len(text) > 10_000:
        return False
    position = 0
    while position < len(text):
        match = _TOKENS.match(text, position)
        if match is None or match.end() == position:
            return text[position:].strip() == ""
        if match.group("name") and match.group("name") not in SYMPY_NAMES:
            return False
        position = match.end()
    return True


class _quiet_torch_logs:
    """torch.export.load logs a warning per legacy-format hint: noise next to tmdeploy's own lines."""

    def __enter__(self):
        self.logger = logging.getLogger("torch.export")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
