"""The package's shape: light modules import without torch, and the CLI's defaults are the API's."""

import subprocess
import sys


def test_numpy_only_modules_import_without_torch():
    code = ("import sys, tmdeploy.verify.stats, tmdeploy.bench.timing, tmdeploy.bench.machine, tmdeploy.report, "
            "tmdeploy.export.options, tmdeploy.export.metadata, tmdeploy.runtime, tmdeploy.cli, "
            "tmdeploy.optimize.options, tmdeploy.optimize.status, tmdeploy.runtimes, tmdeploy.deploy; "
            "tmdeploy.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'polygraphy', 'onnxscript') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fronts_re_export_functions_not_modules():
    from tmdeploy.bench import BenchOptions, run
    from tmdeploy.verify import CheckOptions, check

    assert callable(run) and callable(check) and BenchOptions().device == "cpu" and CheckOptions().batches


MINIMAL_ARGV = {"train": [], "export": ["x.pt"], "check": ["x.pt", "y.onnx"], "bench": ["x.pt"], "optimize": ["x.pt"],
                "serve": ["m.onnx"], "demo": []}


def _subparsers():
    from tmdeploy.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.choices and a.dest == "command"]
    return parser, sub.choices


def test_every_cli_default_is_the_api_default():
    """Options bound to the API leave their default to it; nothing else restates an API field's default."""
    import dataclasses
    import importlib

    from tmdeploy.cli._common import api_default

    parser, commands = _subparsers()
    for command, sub in commands.items():
        bound = [a for a in sub._actions if getattr(a, "api", None)]
        sources = {a.api[0] for a in bound}
        for action in bound:
            assert action.default is None, (command, action.dest)
            api_default(*action.api[:2])  # the field exists in the API
        fields = set()
        for source in sources:
            module, _, name = source.partition(":")
            obj = getattr(importlib.import_module(module), name)
            fields |= {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        unbound = {a.dest for a in sub._actions if a.option_strings and not getattr(a, "api", None)}
        assert not unbound & fields - {"arch", "num_classes", "in_chans"}, (command, unbound & fields)
        if command in MINIMAL_ARGV:
            args = parser.parse_args([command, *MINIMAL_ARGV[command]])
            built = importlib.import_module(f"tmdeploy.cli.{command}_cmd").options(args)
            for value in built if isinstance(built, tuple) else (built,):
                assert value == type(value)(), (command, value)


def test_help_shows_the_api_defaults(capsys):
    from tmdeploy.cli import main

    for command, expected in (("export", "(default: torchscript)"), ("check", "(default: 1,7)"),
                              ("bench", "(default: 1,32,256)"), ("optimize", "(default: min-latency)"),
                              ("serve", "(default: 64)"), ("train", "(default: digits)")):
        try:
            main([command, "--help"])
        except SystemExit:
            pass
        assert expected in " ".join(capsys.readouterr().out.split()), command


def _model_sources():
    from pathlib import Path

    from tmdeploy import models

    root = Path(models.__file__).parent
    return root, sorted(root.rglob("*.py"))


def test_every_architecture_is_a_literal_entry_point():
    """Each registered name is spelled out in its own ``@register_model("name")``, so grep finds its code."""
    import re

    from tmdeploy.models import list_models

    _, paths = _model_sources()
    spelled = re.findall(r'^@register_model\("([^"]+)"', "".join(p.read_text() for p in paths), re.MULTILINE)
    assert sorted(spelled) == list_models()


def test_model_families_share_layers_not_each_other():
    """A family file imports only ``layers`` and the registry from ``models/``; ``layers/`` imports only itself."""
    import ast

    root, paths = _model_sources()
    families = {p.stem for p in root.glob("*.py")} - {"__init__", "registry", "losses"}
    for path in paths:
        relative = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.level]
        for node in relative:
            target = (node.module or "").split(".")[0]
            if path.parent.name == "layers":
                assert node.level == 1, (path.name, node.module)
            elif path.name != "__init__.py":
                assert target not in families, (path.name, node.module)


STAGES = ("models", "checkpoint", "export", "engines", "verify", "bench", "optimize", "report")  # README, Design


def test_no_stage_imports_a_later_one():
    """Every import, at module level or inside a function, of every stage module: none reaches a later stage."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "tmdeploy"
    found = []
    for i, stage in enumerate(STAGES):
        files = sorted((root / stage).rglob("*.py")) if (root / stage).is_dir() else [root / f"{stage}.py"]
        for path in files:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                found += [(path.name, n) for n in names if n.split(".")[:2][-1] in STAGES[i + 1:]
                          and n.startswith("tmdeploy.")]
    assert not found, found


def test_package_inits_only_re_export():
    """A package's ``__init__`` holds its docstring, imports and dunders (``__all__``, a lazy ``__getattr__``,
    ``__version__``): the code lives in named modules, where a newcomer looks for it."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "tmdeploy"
    code = []
    for path in sorted(root.rglob("__init__.py")):
        for node in ast.parse(path.read_text()).body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            names = [n.id for t in getattr(node, "targets", []) for n in ast.walk(t) if isinstance(n, ast.Name)]
            dunders = isinstance(node, ast.Assign) and all(n.startswith("__") and n.endswith("__") for n in names)
            if not (docstring or dunders or isinstance(node, (ast.Import, ast.ImportFrom))):
                code.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not code, code


def test_every_name_list_is_its_table():
    """The torch-free name lists (the CLI's choices, option validation) and the tables that implement them hold
    the same names: a form, exporter or INT8 recipe added in one place is a choice everywhere."""
    import inspect

    from tmdeploy.export import forms, options, precision, template_lowering, to_onnx
    from tmdeploy.optimize.options import OptimizeOptions, int8_recipe_names

    classes = {name for name, obj in vars(forms).items()
               if inspect.isclass(obj) and issubclass(obj, forms._ExportForm) and obj is not forms._ExportForm}
    assert classes == set(options.FORMS.values())
    assert set(template_lowering._LOWERINGS) == set(options.FORMS)
    assert set(to_onnx._EXPORTERS) == set(options.EXPORTERS)
    assert int8_recipe_names() == tuple(precision.INT8_RECIPES)
    assert set(options.INT8_TARGETS) <= set(precision.INT8_RECIPES)
    for recipe in precision.INT8_RECIPES:  # every recipe lower_precision takes, optimize takes
        OptimizeOptions(int8_recipes=(recipe,)).validate()


def test_form_classes_are_named_after_their_forms():
    from tmdeploy.export.options import FORMS

    for form, cls in FORMS.items():
        assert cls == "".join(part.capitalize() for part in form.split("-")), (form, cls)


def test_a_runtime_is_one_entry():
    """Every stage reads its runtimes from tmdeploy.runtimes: the CLI's choices are the registry's, and a
    runtime that is only a runtime (OpenVINO; TensorRT is a stage too) is spelled in a handful of files."""
    from pathlib import Path

    from tmdeploy import runtimes
    from tmdeploy.bench.backends import NAMES
    from tmdeploy.optimize.options import TARGETS
    from tmdeploy.verify.options import DEVICES, RUNTIMES

    assert TARGETS == DEVICES == runtimes.DEVICES == tuple(runtimes.RUNTIMES)
    assert RUNTIMES == runtimes.CHECK_RUNTIMES
    for entry in runtimes.ALL:
        assert {f"{entry.bench_prefix}-{p}" for p in entry.bench} <= set(NAMES)
    root = Path(runtimes.__file__).parent.parent
    spelled = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "openvino" in p.read_text().lower())
    assert len(spelled) <= 4, spelled


def test_the_runtime_registry_sits_below_every_stage():
    """tmdeploy/runtimes/ imports no stage at module level, so every stage may read it; what a runtime opens
    (the bench stage's sessions, verify's runners) is imported inside the function that opens it, by the
    stage that calls it."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "tmdeploy" / "runtimes"
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [(path.name, n) for n in names if n.split(".")[:2][-1] in STAGES and n.startswith("tmdeploy.")]
    assert not found, found
