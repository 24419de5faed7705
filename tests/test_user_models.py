"""Your model, not only ours: networks written and trained here, with nothing of tmdeploy's zoo, deployed the three
ways a user brings them (Python, ``--arch FILE.py:FUNCTION`` with a bare state_dict, a ``torch.export`` program).

The networks are defined in this file, and the command line imports them from it, as a user's own file:

- ``paper_tm_net``: template matching written from the paper's formula (``torch.cat`` of the scores and a
  broadcast null logit, a soft-max, a slice) with hand-written per-pixel RMS norms;
- ``layer_tm_net``: ``tmdeploy.models.layers.TMBlock`` in an architecture tmdeploy does not register;
- ``sge_net``: spatial group enhancement in the style of its public implementation, after BatchNorm;
- torchvision's ``resnet18``, named ``torchvision.models:resnet18`` on the command line.

Each is trained with a plain loop on the user's own split of digits, saved as ``torch.save(model.state_dict())``
and given to tmdeploy with ``npz:`` arrays of that split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import tmdeploy
from tmdeploy import checkpoint
from tmdeploy.cli import main
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.export import ExportOptions, export_onnx
from tmdeploy.export.metadata import props
from tmdeploy.models.layers import TMBlock
from tmdeploy.optimize import OptimizeOptions, optimize
from tmdeploy.threads import torch_threads
from tmdeploy.verify import CheckOptions, check

HERE = Path(__file__).resolve()
SIZE = 8  # digits as stored: the nets train in seconds
GLUE = {"Concat", "Slice", "Expand", "Shape", "Where"}  # what torch.onnx.export writes around a user's TM soft-max


# ---- the user's own networks ---------------------------------------------------------------------------------


def pixel_rms_norm(x):
    return x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + 1e-6)


class PaperTemplateMatching(nn.Module):
    """``p = softmax([s; μ] / τ)[:, :K]``, ``out = ν·p``: the block as the paper writes it."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.k = k
        self.templates = nn.Conv2d(cin, k, 3, stride, padding=1)
        self.values = nn.Conv2d(k, cout, 1, bias=False)
        self.null_logit = nn.Parameter(torch.zeros(()))
        self.log_tau = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        s = self.templates(x)
        n, _, h, w = s.shape
        logits = torch.cat([s, self.null_logit.expand(n, 1, h, w)], dim=1) / self.log_tau.exp()
        return self.values(torch.softmax(logits, dim=1)[:, :self.k])


class PaperBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.tm = PaperTemplateMatching(cin, cout, k, stride)
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x):
        return self.shortcut(x) + self.tm(pixel_rms_norm(x))


class TMNet(nn.Module):
    """A small statistics-free residual net over three blocks of ``block``."""

    def __init__(self, blocks: nn.Module, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 16, 3, padding=1)
        self.blocks = blocks
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(pixel_rms_norm(self.blocks(torch.relu(self.stem(x)))).mean(dim=(2, 3)))


def paper_tm_net(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    blocks = nn.Sequential(PaperBlock(16, 16, 16), PaperBlock(16, 32, 24, stride=2), PaperBlock(32, 32, 24))
    return TMNet(blocks, in_chans, num_classes)


def layer_tm_net(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    blocks = nn.Sequential(TMBlock(16, 16, width=16), TMBlock(16, 32, stride=2, width=24), TMBlock(32, 32, width=24))
    return TMNet(blocks, in_chans, num_classes)


class SpatialGroupEnhance(nn.Module):
    """SGE as its public implementation writes it (reshape by groups, normalise the attention map, sigmoid)."""

    def __init__(self, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))
        self.sig = nn.Sigmoid()

    def forward(self, x):
        b, c, h, w = x.size()
        x = x.view(b * self.groups, -1, h, w)
        xn = (x * self.avg_pool(x)).sum(dim=1, keepdim=True)
        t = xn.view(b * self.groups, -1)
        t = t - t.mean(dim=1, keepdim=True)
        t = t / (t.std(dim=1, keepdim=True) + 1e-5)
        t = t.view(b, self.groups, h, w) * self.weight + self.bias
        x = x * self.sig(t.view(b * self.groups, 1, h, w))
        return x.view(b, c, h, w)


def sge_net(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    def stage(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             SpatialGroupEnhance(4))

    return nn.Sequential(stage(in_chans, 16, 1), stage(16, 32, 2), stage(32, 32, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, num_classes))


# name → (what --arch names, input channels, TM blocks in it, epochs)
NETS = {
    "paper": (f"{HERE}:paper_tm_net", 1, 3, 12),
    "layer": (f"{HERE}:layer_tm_net", 1, 3, 12),
    "sge": (f"{HERE}:sge_net", 1, 0, 8),
    "resnet18": ("torchvision.models:resnet18", 3, 0, 4),
}
BUILDERS = {"paper": paper_tm_net, "layer": layer_tm_net, "sge": sge_net,
            "resnet18": lambda num_classes=10, in_chans=3: torchvision.models.resnet18(num_classes=num_classes)}


# ---- the user's data and training: a plain loop, their own split -------------------------------------------------


@pytest.fixture(scope="module")
def user_split(tmp_path_factory):
    """Digits at 8x8 split 75/25 with the user's own seed (not tmdeploy's 80/20), as .npz files per channel count."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]
    train, test = train_test_split(np.arange(len(images)), test_size=0.25, random_state=7, stratify=digits.target)
    root = tmp_path_factory.mktemp("data")
    files = {}
    for channels in (1, 3):
        x = np.repeat(images, channels, axis=1)
        files[channels] = root / f"digits{channels}.npz"
        np.savez(files[channels], images=x[test], labels=digits.target[test], train_images=x[train],
                 train_labels=digits.target[train])
    mean, std = float(images[train].mean()), float(images[train].std())
    return files, mean, std


def _fit(model: nn.Module, npz: Path, mean: float, std: float, epochs: int) -> float:
    arrays = np.load(npz)
    x = (torch.from_numpy(arrays["train_images"]) - mean) / std
    y = torch.from_numpy(arrays["train_labels"]).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.01)
    steps = epochs * -(-len(x) // 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 4e-3, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        test_x = (torch.from_numpy(arrays["images"]) - mean) / std
        return float((model(test_x).argmax(1) == torch.from_numpy(arrays["labels"])).float().mean())


@pytest.fixture(scope="module")
def trained(user_split, tmp_path_factory):
    """trained(name) -> (module, state_dict file, its npz data, accuracy): trained once, seeded."""
    files, mean, std = user_split
    cache = {}

    def get(name: str):
        if name not in cache:
            _, channels, _, epochs = NETS[name]
            torch.manual_seed(0)
            model = BUILDERS[name](num_classes=10, in_chans=channels)
            with torch.random.fork_rng(), torch_threads(1):  # small batches: a second thread only waits
                torch.manual_seed(0)
                accuracy = _fit(model, files[channels], mean, std, epochs)
            path = tmp_path_factory.mktemp(name) / f"{name}.pt"
            torch.save(model.state_dict(), path)
            cache[name] = (model, path, files[channels], accuracy)
        return cache[name]

    return get


def _model_flags(name: str, mean: float, std: float) -> list[str]:
    arch, channels, _, _ = NETS[name]
    return ["--arch", arch, "--input-size", f"{channels},{SIZE},{SIZE}", "--mean", str(mean), "--std", str(std)]


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


# ---- the command line: --arch FILE.py:FUNCTION with a bare state_dict ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_cli_exports_and_checks_every_precision(name, trained, user_split, tmp_path, capsys):
    _, state, npz, accuracy = trained(name)
    assert accuracy >= 0.9, f"{name} trained to {accuracy:.1%}: the recipe, not the deployment, is wrong"
    _, mean, std = user_split
    flags = _model_flags(name, mean, std)
    blocks = NETS[name][2]
    for precision in ("fp32", "fp16", "int8"):
        out = tmp_path / f"{name}-{precision}.onnx"
        lower = [] if precision == "fp32" else ["--precision", precision, "--calib-data", f"npz:{npz}",
                                                "--int8-target", "onnxruntime"]
        assert main(["export", str(state), *flags, *lower, "--out", str(out)]) == 0, capsys.readouterr().err
        meta = props(onnx.load(str(out), load_external_data=False))
        assert json.loads(meta["tm_blocks"]) == ({"normalized": blocks} if blocks else {})
        assert meta["tm_form"] == ("normalized" if blocks else "none")
        if blocks:  # every block found in the graph and lowered: none of the exporter's glue is left
            assert not _ops(out) & GLUE, _ops(out) & GLUE
        assert "BatchNormalization" not in _ops(out)  # folded, as for the zoo's baselines
        status = main(["check", str(state), str(out), *flags, "--data", f"npz:{npz}", "--report-dir", str(tmp_path)])
        report = json.loads((tmp_path / f"{out.stem}.check.json").read_text())
        assert status == 0, (precision, report["outputs"]["logits"])
        assert "360" not in report["inputs"] and "450 test images" in report["inputs"]  # the user's split, whole
        assert "the user's own train and held-out arrays" in report["inputs"]


def test_the_rewritten_graph_matches_the_users_module_to_float_rounding(trained, user_split, tmp_path):
    model, state, npz, _ = trained("paper")
    _, mean, std = user_split
    deployable = tmdeploy.from_module(model, input_size=(1, SIZE, SIZE), class_names=list("0123456789"),
                                      mean=[mean], std=[std])
    path = export_onnx(deployable, tmp_path / "paper.onnx", ExportOptions())
    report = check(deployable, path, CheckOptions(data=f"npz:{npz}"))
    stats = report.outputs["logits"]
    assert report.passed and stats["max_abs_error"] < 1e-4 and stats["top1_agreement"] == 1.0
    assert not _ops(path) & GLUE


# ---- Python: from_module, the user's arrays, optimize --quick -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_python_api_exports_checks_and_optimizes(name, trained, user_split, tmp_path):
    model, _, npz, _ = trained(name)
    _, mean, std = user_split
    channels = NETS[name][1]
    deployable = tmdeploy.from_module(model, input_size=(channels, SIZE, SIZE), class_names=[str(i) for i in range(10)],
                                      mean=[mean] * channels, std=[std] * channels)
    arrays = np.load(npz)
    held_out = list(zip(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])))
    path = export_onnx(deployable, tmp_path / "m.onnx", ExportOptions())
    report = check(deployable, path, CheckOptions(data=held_out))
    assert report.passed and "python:samples" in report.inputs
    result = optimize(deployable, OptimizeOptions(quick=True, threads=1, batches=(1, 4), window_s=0.05,
                                                  profile_s=2.0, accuracy_limit=64, data=f"npz:{npz}",
                                                  out=tmp_path / "opt", show_progress=False))
    assert result.passed and (tmp_path / "opt" / "model.onnx").is_file()
    status = result.status
    assert status["data"]["split_by"].startswith("the user's own")
    built = [c for c in status["candidates"] if c["steps"][0]["status"] == "ok"]
    assert {c["precision"] for c in built} >= {"fp32", "fp16", "int8"}


def test_optimize_times_one_graph_where_the_forms_are_one_graph(trained, user_split, tmp_path):
    """A network without template-matching blocks has the same graph in every form: built once, not timed four
    times over."""
    model, _, npz, _ = trained("sge")
    _, mean, std = user_split
    deployable = tmdeploy.from_module(model, input_size=(1, SIZE, SIZE), class_names=[str(i) for i in range(10)],
                                      mean=[mean], std=[std])
    result = optimize(deployable, OptimizeOptions(precisions=("fp32",), runtimes=("onnxruntime",), threads=1,
                                                  batches=(1,), window_s=0.05, profile_s=1.0, accuracy_limit=32,
                                                  data=f"npz:{npz}", out=tmp_path / "opt", show_progress=False))
    records = {c["name"]: c for c in result.status["candidates"]}
    assert records["normalized-fp32"]["status"] == "ok"
    for form in ("folded", "folded-padded", "deferred"):
        build = records[f"{form}-fp32"]["steps"][0]
        assert build["status"] == "skipped" and build["reason"] == "the same graph as normalized-fp32"


# ---- torch.export programs ------------------------------------------------------------------------------------------


def _program(model: nn.Module, path: Path, dynamic: bool = True) -> Path:
    example = torch.randn(2, 1, SIZE, SIZE)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=shapes), path)
    return path


def test_a_pt2_program_deploys_without_model_code(trained, user_split, tmp_path, capsys):
    model, _, npz, _ = trained("paper")
    _, mean, std = user_split
    program = _program(model, tmp_path / "paper.pt2")
    flags = ["--mean", str(mean), "--std", str(std)]
    out = tmp_path / "paper.onnx"
    assert main(["export", str(program), *flags, "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads(props(onnx.load(str(out)))["tm_blocks"]) == {"normalized": 3} and not _ops(out) & GLUE
    assert main(["check", str(program), str(out), *flags, "--data", f"npz:{npz}", "--report-dir", str(tmp_path)]) == 0
    loaded = checkpoint.load_model(program, mean=[mean], std=[std])
    assert loaded.card.input_size == (1, SIZE, SIZE) and loaded.card.num_classes == 10


def test_a_pt2_program_for_one_batch_size_is_refused_with_how_to_export_it(trained, tmp_path):
    program = _program(trained("paper")[0], tmp_path / "fixed.pt2", dynamic=False)
    with pytest.raises(TmdeployError, match=r"exported for batches of 2 only; export it with a dynamic batch"):
        checkpoint.load_model(program)


def _rewrite_archive(source: Path, out: Path, *, program=None, replace=None, extra=None) -> Path:
    """``source`` with one part changed the way a hostile file would change it."""
    import zipfile

    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            content = zin.read(item.filename)
            part = item.filename.split("/", 1)[1]
            if program and part == "models/model.json":
                document = json.loads(content)
                program(document)
                content = json.dumps(document).encode()
            if replace and part in replace:
                content = replace[part](content)
            zout.writestr(item, content)
        for part, content in (extra or {}).items():
            zout.writestr(f"{item.filename.split('/')[0]}/{part}", content)
    return out


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickled_weight(marker: Path):
    def edit(content: bytes) -> bytes:
        config = json.loads(content)
        config["config"][next(iter(config["config"]))]["use_pickle"] = True
        return json.dumps(config).encode()

    return edit


def _node_target(target: str):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target

    return edit


def _shape_expression(expression: str):
    def edit(program):
        values = program["graph_module"]["graph"]["sym_int_values"]
        values[next(iter(values))]["as_expr"]["expr_str"] = expression

    return edit


HOSTILE_PROGRAMS = {
    "node-target": (lambda m: {"program": _node_target("torch.load")}, "a node calls 'torch.load'"),
    "shape-expression": (lambda m: {"program": _shape_expression(f"__import__('pathlib').Path('{m}').touch()")},
                         "is not plain integer arithmetic"),
    "pickled-weight": (lambda m: {"replace": {"data/weights/model_weights_config.json": _pickled_weight(m)}},
                       "is pickled"),
    "pickled-sample-inputs": (lambda m: {"replace": {"data/sample_inputs/model.pt":
                                                     lambda _: __import__("pickle").dumps(_Payload(m))}},
                              "its sample inputs are not plain tensors"),
    "aot-compiled-code": (lambda m: {"extra": {"data/aotinductor/model/model.so": b"\x7fELF"}}, "AOTInductor"),
}


@pytest.mark.parametrize("case", HOSTILE_PROGRAMS)
def test_a_pt2_that_could_run_code_is_refused_before_anything_runs(case, trained, tmp_path, capsys):
    """torch.export.load unpickles, evaluates sympy strings and loads shared libraries: tmdeploy reads the archive
    first and refuses each of these in one line, and nothing in them ran."""
    marker = tmp_path / "PAYLOAD_RAN"
    make, message = HOSTILE_PROGRAMS[case]
    hostile = _rewrite_archive(_program(trained("paper")[0], tmp_path / "good.pt2"), tmp_path / f"{case}.pt2",
                               **make(marker))
    assert main(["export", str(hostile), "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tmdeploy: error: refusing to load") and message in err[0], err
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


def test_a_pt2_guards_string_is_never_compiled(trained, tmp_path):
    """The program's ``guards_code`` is Python source torch compiles when it makes the module with its guards;
    tmdeploy makes it without them."""
    marker = tmp_path / "PAYLOAD_RAN"

    def guards(program):
        program["guards_code"] = [f"__import__('pathlib').Path('{marker}').touch() or True"]

    hostile = _rewrite_archive(_program(trained("paper")[0], tmp_path / "good.pt2"), tmp_path / "guards.pt2",
                               program=guards)
    deployable = checkpoint.load_model(hostile)
    deployable.module(torch.zeros(3, 1, SIZE, SIZE))
    assert not marker.exists()


# ---- security stays as strict: only the person running the command names code ---------------------------------------


def test_a_name_inside_a_checkpoint_never_imports_anything(trained, tmp_path, monkeypatch, capsys):
    """A card whose arch names code (``os:system``, or a module that would announce its import) is only looked up
    in the registry."""
    (tmp_path / "announce.py").write_text(f"from pathlib import Path\nPath({str(tmp_path / 'IMPORTED')!r}).touch()\n"
                                          "def build(**kw):\n    raise SystemExit\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model, state, _, _ = trained("paper")
    for arch in ("os:system", "announce:build", f"{tmp_path / 'announce.py'}:build"):
        card = checkpoint.ModelCard(arch=arch, arch_kwargs={}, class_names=[str(i) for i in range(10)],
                                    input_size=(1, SIZE, SIZE), mean=[0.0], std=[1.0])
        path = tmp_path / "card.pt"
        torch.save({**checkpoint.card_to_dict(card), "state_dict": model.state_dict()}, path)
        assert main(["export", str(path), "--out", str(tmp_path / "x.onnx")]) == 1
        err = capsys.readouterr().err
        assert f"unknown architecture '{arch[:60]}" in err and "--arch FILE.py:FUNCTION" in err
    assert not (tmp_path / "IMPORTED").exists()


def test_a_whole_pickled_module_is_refused_with_what_to_save_instead(trained, tmp_path, capsys):
    torch.save(trained("paper")[0], tmp_path / "whole.pt")
    assert main(["export", str(tmp_path / "whole.pt"), "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert "holds a whole pickled module (torch.save(model)" in err and "save model.state_dict()" in err
    assert ".pt2" in err and len(err.splitlines()) == 1


def test_a_torchscript_archive_is_named_as_what_it_is(tmp_path, capsys):
    scripted = torch.jit.script(nn.Linear(2, 2))
    torch.jit.save(scripted, str(tmp_path / "scripted.pt"))
    assert main(["export", str(tmp_path / "scripted.pt"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "is a TorchScript archive (torch.jit.save)" in capsys.readouterr().err


# ---- what training scripts save, and what the command must be told --------------------------------------------------


def test_a_lightning_style_checkpoint_is_unwrapped(trained, user_split, tmp_path, capsys):
    model, _, _, _ = trained("paper")
    _, mean, std = user_split
    wrapped = {"epoch": 11, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "lightning.ckpt")
    torch.save({"model": model.state_dict()}, tmp_path / "plain.pth")
    for name in ("lightning.ckpt", "plain.pth"):
        out = tmp_path / f"{name}.onnx"
        assert main(["export", str(tmp_path / name), *_model_flags("paper", mean, std), "--out", str(out)]) == 0
    torch.save({f"net.extra.{k}": v for k, v in model.state_dict().items()}, tmp_path / "other.pt")
    assert main(["export", str(tmp_path / "other.pt"), *_model_flags("paper", mean, std)]) == 1
    assert "every tensor name starts with 'net.'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, status, message", [
    ([], 2, "the input size cannot be read off the weights: pass --input-size C,H,W"),
    (["--input-size", "1,8,8", "--num-classes", "5"], 1, "tensor 'head.weight' has shape (10, 32)"),
    (["--input-size", "1,8,8", "--mean", "0.1,0.2"], 2, "--mean takes one value or one per input channel (1)"),
    (["--input-size", "1,8,8", "--std", "0"], 2, "std must be positive"),
    (["--input-size", "3,8,8"], 1, "the model does not run on images of size 3,8,8 (--input-size)"),
])
def test_what_the_file_does_not_say_is_asked_for_by_its_flag(flags, status, message, trained, tmp_path, capsys):
    _, state, _, _ = trained("paper")
    assert main(["export", str(state), "--arch", f"{HERE}:paper_tm_net", *flags, "--out", str(tmp_path / "x.onnx")]) \
        == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_class_names_from_a_file_name_the_classes(trained, tmp_path, capsys):
    _, state, _, _ = trained("paper")
    (tmp_path / "names.txt").write_text("\n".join(f"digit-{i}" for i in range(10)) + "\n")
    out = tmp_path / "named.onnx"
    assert main(["export", str(state), "--arch", f"{HERE}:paper_tm_net", "--input-size", "1,8,8",
                 "--class-names", str(tmp_path / "names.txt"), "--out", str(out)]) == 0
    assert json.loads(props(onnx.load(str(out)))["class_names"])[3] == "digit-3"
    (tmp_path / "few.txt").write_text("a\nb\n")
    assert main(["export", str(state), "--arch", f"{HERE}:paper_tm_net", "--input-size", "1,8,8",
                 "--class-names", str(tmp_path / "few.txt")]) == 2
    assert "2 class names given, but the model's logits have 10 classes" in capsys.readouterr().err


@pytest.mark.parametrize("arch, status, message", [
    ("missing_file.py:build", 2, "missing_file.py is not a file"),
    (f"{HERE}:no_such_function", 2, "has no 'no_such_function'"),
    (f"{HERE}:GLUE", 2, "is a set, not a function or class"),
    ("no_such_package.models:build", 2, "no module named 'no_such_package'"),
    ("torchvision.models:resnet18:x", 2, "'torchvision.models:resnet18' is not a module name"),
    ("torchvision.models:", 2, "expected FILE.py:FUNCTION or package.module:FUNCTION"),
])
def test_an_arch_spec_that_does_not_build_is_one_line(arch, status, message, trained, tmp_path, capsys):
    _, state, _, _ = trained("paper")
    assert main(["export", str(state), "--arch", arch, "--input-size", "1,8,8"]) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_from_module_refuses_what_is_not_a_classifier():
    with pytest.raises(UsageError, match="pass --input-size"):
        tmdeploy.from_module(nn.Linear(4, 2), input_size=None, class_names=["a", "b"])
    with pytest.raises(TmdeployError, match=r"returns a tensor of shape \(1, 16, 8, 8\)"):
        tmdeploy.from_module(nn.Conv2d(1, 16, 3, padding=1), input_size=(1, 8, 8), class_names=["a"])
    with pytest.raises(UsageError, match="a bare nn.Module has no card"):
        export_onnx(nn.Linear(4, 2), "x.onnx")


def test_bench_and_optimize_take_the_users_model_on_the_command_line(trained, user_split, tmp_path, capsys):
    _, state, npz, _ = trained("paper")
    _, mean, std = user_split
    flags = [*_model_flags("paper", mean, std), "--data", f"npz:{npz}", "--threads", "1", "--batch", "1"]
    assert main(["bench", str(state), *flags, "--backends", "pytorch,ort-fp32", "--min-time", "0.05",
                 "--report-dir", str(tmp_path / "bench")]) == 0, capsys.readouterr().err
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert bench["data"]["split_by"].startswith("the user's own") and bench["model"]["arch"].endswith(":paper_tm_net")
    assert main(["optimize", str(state), *flags, "--quick", "--precisions", "fp32", "--window-s", "0.05",
                 "--profile-s", "1", "--quiet", "--out", str(tmp_path / "opt")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "opt" / "status.json").read_text())["passed"]


def test_a_plain_onnx_classifier_runs_without_tmdeploy_metadata(tmp_path, caplog):
    """runtime.load (and so serve) takes any image classifier's ONNX file, saying what it read off the graph."""
    from tmdeploy import runtime
    from tmdeploy.engines.triton import write_model_repository

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    path = tmp_path / "plain.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), str(path), dynamo=False, input_names=["x"],
                      output_names=["out"], dynamic_axes={"x": {0: "n"}, "out": {0: "n"}})
    x = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    with caplog.at_level("WARNING"), runtime.load(path) as predictor:
        logits = predictor.predict(x)
        labels = predictor.classify(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.allclose(logits, expected, atol=1e-4) and labels == [str(i) for i in expected.argmax(1)]
    assert "no tmdeploy metadata: assumed its input 'x' takes float32 images (N, 3, 16, 16)" in caplog.text
    assert "classes 0..3" in caplog.text
    model_dir = write_model_repository(path, tmp_path / "repo", name="plain", max_batch_size=8)
    assert (model_dir / "1" / "model.onnx").is_file()
