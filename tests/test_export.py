"""Export produces clean, self-describing, statistics-free ONNX that computes what PyTorch computes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tmdeploy import checkpoint, models
from tmdeploy.errors import UsageError
from tmdeploy.export import FORMS, ExportOptions, export_onnx, graph
from tmdeploy.export.options import EXPORTERS
from tmdeploy.export.metadata import read
from tmdeploy.export.to_onnx import DeployModule
from tmdeploy.verify import CheckOptions, References, check, parity

TM_FORBIDDEN = {"Concat", "Slice", "Expand", "Shape", "BatchNormalization"}


def _random_checkpoint(tmp_path, arch, in_chans=1, seed=0):
    """An untrained model with non-trivial τ, μ and BatchNorm statistics, so folding is exercised."""
    torch.manual_seed(seed)
    model = models.create(arch, num_classes=10, in_chans=in_chans)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        if hasattr(m, "null_logit"):
            m.null_logit.data.fill_(0.4)
            m.log_temperature.data.fill_(-0.3)
    card = checkpoint.card_for(model, [str(i) for i in range(10)], [0.3] * in_chans, [0.4] * in_chans,
                               input_size=(in_chans, 16, 16))
    return checkpoint.load(checkpoint.save(tmp_path / f"{arch}.pt", model, card))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("form", FORMS)
def test_tm_forms_lower_to_plain_ops_and_agree(tmp_path, form, exporter):
    ckpt = _random_checkpoint(tmp_path, "rn26-tm")
    path = export_onnx(ckpt, tmp_path / f"{form}.onnx", ExportOptions(tm_form=form, exporter=exporter))
    ops = graph.op_histogram(onnx.load(str(path)))
    assert not TM_FORBIDDEN & set(ops), ops
    blocks = sum(isinstance(m, models.layers.TMBlock) for m in ckpt.build_model().modules())
    if form.startswith("folded"):
        assert ops["Softmax"] == blocks  # one Conv → Softmax → Conv → Add per block
    x = np.random.default_rng(0).standard_normal((5, 1, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = ckpt.build_model()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(path, x)[0], expected, atol=2e-5, rtol=1e-4)


def test_forms_agree_with_each_other(tmp_path):
    ckpt = _random_checkpoint(tmp_path, "rn26-cls")
    x = np.random.default_rng(1).standard_normal((4, 1, 16, 16)).astype(np.float32)
    outs = [_run(export_onnx(ckpt, tmp_path / f"{f}.onnx", ExportOptions(tm_form=f, patch_logits=True)), x)
            for f in FORMS]
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_bn_baseline_has_no_batchnorm_and_metadata_describes_the_file(tmp_path):
    ckpt = _random_checkpoint(tmp_path, "rn26")
    path = export_onnx(ckpt, None, ExportOptions())
    assert path == tmp_path / "rn26.onnx"
    model = onnx.load(str(path))
    assert "BatchNormalization" not in graph.op_histogram(model)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert props["arch"] == "rn26" and props["precision"] == "fp32" and props["source_sha256"] == ckpt.sha256
    meta = read(path)
    assert meta.class_names == [str(i) for i in range(10)] and meta.input_size == [1, 16, 16]
    assert session.get_inputs()[0].name == "images" and session.get_inputs()[0].shape[0] == "batch"
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_baked_preprocess_takes_uint8_pixels(tmp_path):
    ckpt = _random_checkpoint(tmp_path, "rn26-tm")
    path = export_onnx(ckpt, tmp_path / "u8.onnx", ExportOptions(bake_preprocess=True))
    pixels = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = ckpt.build_model()((x - 0.3) / 0.4).numpy()
    np.testing.assert_allclose(_run(path, pixels)[0], expected, atol=2e-5, rtol=1e-4)
    assert read(path).preprocess == "baked" and read(path).layout == "NHWC"


def test_patch_logits_output_and_aux_head_dropped(tmp_path):
    ckpt = _random_checkpoint(tmp_path, "rn26-aux")
    plain = onnx.load(str(export_onnx(ckpt, tmp_path / "plain.onnx", ExportOptions())))
    assert [o.name for o in plain.graph.output] == ["logits"]
    aux_head = [i.name for i in plain.graph.initializer if "aux" in i.name or "patch" in i.name]
    assert not aux_head  # the training-only per-patch classifier is not in the inference graph
    cls = _random_checkpoint(tmp_path, "rn26-cls")
    path = export_onnx(cls, tmp_path / "cls.onnx", ExportOptions(patch_logits=True))
    x = np.random.default_rng(3).standard_normal((2, 1, 16, 16)).astype(np.float32)
    logits, patches = _run(path, x)
    module = DeployModule(cls.build_model(), [0.0], [1.0], False, True)
    with torch.no_grad():
        ref_logits, ref_patches = module.model.forward_with_patch_logits(torch.from_numpy(x))
    np.testing.assert_allclose(patches, ref_patches.numpy(), atol=2e-5, rtol=1e-4)
    assert patches.shape[:2] == (2, 10)


def test_old_opset_is_refused_with_the_reason(tmp_path):
    ckpt = _random_checkpoint(tmp_path, "rn26-tm")
    with pytest.raises(UsageError, match="Softmax before opset 13"):
        export_onnx(ckpt, tmp_path / "old.onnx", ExportOptions(opset=12))
    assert not (tmp_path / "old.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("arch", models.list_models())
def test_every_architecture_exports_and_passes_check(tmp_path, arch, exporter):
    ckpt = _random_checkpoint(tmp_path, arch)
    path = export_onnx(ckpt, tmp_path / f"{arch}.onnx", ExportOptions(exporter=exporter))
    report = check(ckpt, path, CheckOptions(batches=(1, 7), iterations=1))
    assert report.passed, report.to_markdown()


def test_checks_sharing_references_run_pytorch_once(tmp_path, monkeypatch):
    ckpt = _random_checkpoint(tmp_path, "rn26")
    path = export_onnx(ckpt, tmp_path / "m.onnx", ExportOptions())
    options = CheckOptions(batches=(2,), iterations=1)
    alone = check(ckpt, path, options)
    made, reference = [], parity._reference
    monkeypatch.setattr(parity, "_reference", lambda *args: made.append(args) or reference(*args))
    references = References(ckpt)
    shared = [check(ckpt, path, options, references=references) for _ in range(2)]
    assert len(made) == 1 and shared[0].outputs == shared[1].outputs == alone.outputs


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_altered_weights_fail_check_with_exit_1_and_localize(tmp_path, exporter):
    ckpt = _random_checkpoint(tmp_path, "rn26")
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx", ExportOptions(exporter=exporter))
    model = ckpt.build_model()
    with torch.no_grad():
        model.get_submodule("stages.1").apply(
            lambda m: m.weight.mul_(1.5) if isinstance(m, torch.nn.Conv2d) else None)
    altered = checkpoint.save(tmp_path / "altered.pt", model, ckpt.card)
    cli = [sys.executable, "-m", "tmdeploy", "check", str(altered), str(onnx_path), "--localize",
           "--report-dir", str(tmp_path)]
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "FAIL" in done.stdout and "First diverging block: `stages.1.0`" in done.stdout
    assert (tmp_path / "m.check.json").exists() and (tmp_path / "m.check.md").exists()
    ok = subprocess.run(cli[:4] + [str(tmp_path / "rn26.pt"), str(onnx_path), "--report-dir", str(tmp_path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_polygraphy_cli_rechecks_saved_inputs_and_outputs(tmp_path):
    ckpt = _random_checkpoint(tmp_path, "rn26-cls")
    path = export_onnx(ckpt, tmp_path / "m.onnx", ExportOptions())
    report = check(ckpt, path, CheckOptions(save_inputs=tmp_path / "in.json", save_outputs=tmp_path / "out.json"))
    assert report.passed
    done = subprocess.run(
        [*_polygraphy(), "run", str(path), "--onnxrt", "--load-inputs", str(tmp_path / "in.json"),
         "--load-outputs", str(tmp_path / "out.json"), "--atol", "1e-4", "--rtol", "1e-3"],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASSED" in done.stdout + done.stderr


def _polygraphy():
    """The polygraphy CLI installed beside this interpreter (the test's own virtual environment)."""
    return [str(Path(sys.executable).with_name("polygraphy"))]


def test_untrained_batchnorm_with_equal_statistics_exports(tmp_path):
    """Fresh BatchNorms share equal parameters, which the TorchScript exporter feeds through Identity nodes:
    the pre-activation BN (DenseNet) must still become a constant Mul/Add."""
    torch.manual_seed(0)
    model = models.create("dn100", num_classes=10, in_chans=1)
    card = checkpoint.card_for(model, [str(i) for i in range(10)], [0.3], [0.4], input_size=(1, 16, 16))
    ckpt = checkpoint.load(checkpoint.save(tmp_path / "dn100.pt", model, card))
    path = export_onnx(ckpt, tmp_path / "dn100.onnx", ExportOptions())
    assert "BatchNormalization" not in graph.op_histogram(onnx.load(str(path)))
    assert check(ckpt, path, CheckOptions(batches=(2,), iterations=1)).passed
