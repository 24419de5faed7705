"""tmdeploy.runtime on real ONNX files and real onnxruntime sessions.

``write_model`` builds small real classifiers with onnx.helper (test_engines and test_serve use it too).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tmdeploy import onnxfile, runtime
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.export.metadata import ModelMetadata
from tmdeploy.export.metadata import write as write_metadata

CLASSES = ["cat", "dog", "bird"]
MEAN, STD = [0.5], [0.25]


def write_model(path, *, baked=False, patch=False, size=(1, 8, 8), seed=0, batch="batch", meta_size=None):
    """Conv3x3 → Relu → GAP → Gemm ``logits`` (+ 1×1-conv ``patch_logits``), optionally with baked preprocessing.

    The same seed gives the same weights with or without ``baked``, so the two must agree on raw images.
    """
    c, h, w = size
    n, k = len(CLASSES), 4
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(size=(k, c, 3, 3)).astype(np.float32), "b1": rng.normal(size=k).astype(np.float32),
        "w2": rng.normal(size=(n, k)).astype(np.float32), "b2": rng.normal(size=n).astype(np.float32),
    }
    nodes, x = [], "images"
    if baked:
        weights.update(scale=np.float32([1 / 255]), mean=np.float32(MEAN * c).reshape(1, c, 1, 1),
                       std=np.float32(STD * c).reshape(1, c, 1, 1))
        nodes += [
            helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Mul", ["t", "scale"], ["u"]),
            helper.make_node("Sub", ["u", "mean"], ["centered"]),
            helper.make_node("Div", ["centered", "std"], ["x"]),
        ]
        x = "x"
    nodes += [
        helper.make_node("Conv", [x, "w1", "b1"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("GlobalAveragePool", ["feat"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"], transB=1),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, n])]
    if patch:
        weights["w3"] = weights["w2"].reshape(n, k, 1, 1)
        nodes.append(helper.make_node("Conv", ["feat", "w3", "b2"], ["patch_logits"]))
        outputs.append(helper.make_tensor_value_info("patch_logits", TensorProto.FLOAT, [batch, n, h, w]))
    graph_input = (helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, h, w, c]) if baked
                   else helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, c, h, w]))
    graph = helper.make_graph(nodes, "tiny", [graph_input], outputs,
                              [numpy_helper.from_array(v, name) for name, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    write_metadata(model, ModelMetadata(
        arch="tiny", class_names=list(CLASSES), input_size=list(meta_size or size), mean=MEAN * c, std=STD * c,
        layout="NHWC" if baked else "NCHW", input_dtype="uint8" if baked else "float32",
        preprocess="baked" if baked else "none", outputs=[o.name for o in outputs],
    ))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "plain": write_model(root / "plain.onnx"),
        "baked": write_model(root / "baked.onnx", baked=True),
        "patch": write_model(root / "patch.onnx", patch=True),
    }


def pixels(n=5, seed=1, size=(8, 8, 1)):
    return np.random.default_rng(seed).integers(0, 256, (n, *size), dtype=np.uint8)


def normalized(px):
    return ((px.transpose(0, 3, 1, 2).astype(np.float32) / 255 - MEAN[0]) / STD[0]).astype(np.float32)


def ort_logits(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"images": x})[0]


# ---- predict / classify ---------------------------------------------------------------------------


def test_predict_matches_onnxruntime_for_numpy_and_torch(models):
    torch = pytest.importorskip("torch")
    p = runtime.load(models["plain"])
    x = normalized(pixels())
    expected = ort_logits(models["plain"], x)
    np.testing.assert_array_equal(p.predict(x), expected)
    np.testing.assert_array_equal(p.predict(x.astype(np.float64)), expected)
    np.testing.assert_array_equal(p.predict(torch.from_numpy(x).requires_grad_()), expected)
    assert p.metadata.class_names == CLASSES and p.providers == ["CPUExecutionProvider"]


def test_baked_graph_takes_pixels_and_agrees_with_runtime_preprocessing(models):
    torch = pytest.importorskip("torch")
    plain, baked = runtime.load(models["plain"]), runtime.load(models["baked"])
    px = pixels()
    expected = plain.predict(normalized(px))
    np.testing.assert_allclose(baked.predict(px), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plain.predict(px, raw=True), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(baked.predict(torch.from_numpy(px), raw=True), expected, rtol=1e-5, atol=1e-5)
    unit = px.transpose(0, 3, 1, 2).astype(np.float32) / 255  # raw floats in [0, 1], NCHW
    np.testing.assert_allclose(plain.predict(unit, raw=True), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(baked.predict(unit, raw=True), expected, rtol=1e-5, atol=1e-5)


def test_classify_names_the_argmax_class_for_every_input_kind(models):
    torch = pytest.importorskip("torch")
    px = pixels(n=16)
    expected = [CLASSES[i] for i in np.argmax(ort_logits(models["plain"], normalized(px)), axis=1)]
    assert len(set(expected)) > 1  # the test model does not answer one class for everything
    for name in ("plain", "baked"):
        p = runtime.load(models[name])
        assert p.classify(px) == expected
        assert p.classify(torch.from_numpy(px)) == expected
        assert p.classify(px.transpose(0, 3, 1, 2) / 255.0) == expected


def test_run_returns_every_output(models):
    p = runtime.load(models["patch"])
    out = p.run(normalized(pixels(n=2)))
    assert set(out) == {"logits", "patch_logits"}
    assert out["logits"].shape == (2, 3) and out["patch_logits"].shape == (2, 3, 8, 8)


# ---- input validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 3, 8, 8), np.float32), r"expected images of shape \(N, 1, 8, 8\), got \(2, 3, 8, 8\)"),
    (np.zeros((2, 1, 8, 9), np.float32), r"expected images of shape \(N, 1, 8, 8\), got \(2, 1, 8, 9\)"),
    (np.zeros((1, 8, 8), np.float32), r"got \(1, 8, 8\) \(one image\? add a batch axis"),
    (np.zeros((0, 1, 8, 8), np.float32), "empty batch"),
    (np.zeros((2, 8, 8, 1), np.uint8), r"expected normalized float images, got uint8 \(raw pixels\?"),
    (np.zeros((2, 1, 8, 8), np.int64), "expected normalized float images, got int64"),
])
def test_predict_rejects_what_the_graph_does_not_take(models, images, message):
    with pytest.raises(TmdeployError, match=message):
        runtime.load(models["plain"]).predict(images)


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 1, 8, 8), np.float32), "expected uint8 pixels .*baked.*, got float32"),
    (np.zeros((2, 8, 8, 3), np.uint8), r"expected images of shape \(N, 8, 8, 1\), got \(2, 8, 8, 3\)"),
])
def test_baked_predict_rejects_what_the_graph_does_not_take(models, images, message):
    with pytest.raises(TmdeployError, match=message):
        runtime.load(models["baked"]).predict(images)


@pytest.mark.parametrize("model", ["plain", "baked"])
@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 8, 3), np.uint8), r"raw uint8 images \(N, H, W, C\) of shape \(N, 8, 8, 1\), got \(2, 8, 8, 3\)"),
    (np.zeros((2, 1, 8, 8), np.uint8), r"of shape \(N, 8, 8, 1\), got \(2, 1, 8, 8\)"),
    (np.zeros((2, 3, 8, 8), np.float32), r"raw float images \(N, C, H, W\) of shape \(N, 1, 8, 8\), got \(2, 3, 8, 8\)"),
    (np.full((2, 1, 8, 8), 255.0, np.float32), r"must be in \[0, 1\], got values in \[255, 255\] \(0..255 pixels\?"),
    (np.full((2, 1, 8, 8), -1.5, np.float32), r"must be in \[0, 1\].*already normalized\?"),
    (np.zeros((2, 8, 8, 1), np.int32), "expected raw images as uint8 pixels or floats in .0, 1., got int32"),
])
def test_classify_rejects_malformed_raw_images(models, model, images, message):
    with pytest.raises(TmdeployError, match=message):
        runtime.load(models[model]).classify(images)


def test_nonfinite_rows_raise_by_default_and_stay_nan_when_asked(models):
    p = runtime.load(models["plain"])
    x = normalized(pixels(n=4))
    x[1, 0, 2, 3], x[3, 0, 0, 0] = np.nan, np.inf
    with pytest.raises(TmdeployError, match=r"NaN or Inf in 2 row\(s\) \(1, 3\).*check_finite=False"):
        p.predict(x)
    raw = np.full((4, 1, 8, 8), 0.5, np.float32)
    raw[1] = np.nan
    with pytest.raises(TmdeployError, match=r"row\(s\) \(1\)"):
        p.classify(raw)
    logits = p.predict(x, check_finite=False)
    assert np.isnan(logits[1]).all() and np.isfinite(logits[[0, 2]]).all()
    np.testing.assert_array_equal(logits[[0, 2]], p.predict(x[[0, 2]]))


def test_raw_nan_cannot_become_pixels_of_a_baked_graph(models):
    x = np.full((2, 1, 8, 8), 0.5, np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(TmdeployError, match=r"NaN or Inf in 1 row\(s\) \(0\)"):
        runtime.load(models["baked"]).predict(x, raw=True, check_finite=False)


def test_batch_outside_an_engine_profile_is_refused_before_running(models):
    loaded = runtime.load(models["plain"])
    p = runtime.Predictor(loaded._backend, loaded.metadata, providers=loaded.providers, batch_range=(1, 4))
    assert p.predict(normalized(pixels(n=4))).shape == (4, 3)
    with pytest.raises(TmdeployError, match=r"batch of 5 images is outside the engine's profile 1..4"):
        p.predict(normalized(pixels(n=5)))


# ---- loading and providers ------------------------------------------------------------------------


def test_resolve_providers():
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    known = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider", "OpenVINOExecutionProvider"]
    assert runtime.resolve_providers(None, available, known) == available
    assert runtime.resolve_providers("cuda, CPU,cpu", available, known) == available
    assert runtime.resolve_providers(["CPUExecutionProvider"], available, known) == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="unknown onnxruntime provider 'gpu'"):
        runtime.resolve_providers("gpu", available, known)
    with pytest.raises(UsageError, match="expected names"):
        runtime.resolve_providers("cpu,", available, known)
    with pytest.raises(TmdeployError, match="TensorrtExecutionProvider is not in this onnxruntime build"):
        runtime.resolve_providers("tensorrt", available, known)


def test_load_validates_providers_and_device(models):
    assert runtime.load(models["plain"], providers="cpu").providers == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="unknown onnxruntime provider 'Nope'"):
        runtime.load(models["plain"], providers=["Nope"])
    with pytest.raises(UsageError, match="device '-1'"):
        runtime.load(models["plain"], device=-1)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(TmdeployError, match='CUDAExecutionProvider is not in this onnxruntime build.*tmdeploy\\[gpu\\]'):
            runtime.load(models["plain"], providers="cuda")
        with pytest.raises(TmdeployError, match="device=0 needs a GPU provider"):
            runtime.load(models["plain"], device=0)


def test_load_refuses_unknown_missing_and_inconsistent_files(tmp_path):
    with pytest.raises(UsageError, match="expected an .onnx file or a TensorRT engine"):
        runtime.load(tmp_path / "model.pt")
    with pytest.raises(TmdeployError, match="ONNX file not found"):
        runtime.load(tmp_path / "missing.onnx")
    lying = write_model(tmp_path / "lying.onnx", meta_size=(1, 16, 16))
    with pytest.raises(TmdeployError, match=r"metadata describes input \(N, 1, 16, 16\).*graph takes \['batch', 1, 8, 8\]"):
        runtime.load(lying)
    with pytest.raises(UsageError, match="providers apply to .onnx files"):
        runtime.load(tmp_path / "model.plan", providers="cpu")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_loading_an_engine_without_tensorrt_names_the_install_step(tmp_path):
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(TmdeployError, match=r'TensorRT is not installed: .*pip install "tmdeploy\[gpu\]"') as err:
        runtime.load(engine)
    assert "\n" not in str(err.value)
    with pytest.raises(TmdeployError, match="engine file not found"):
        runtime.load(tmp_path / "missing.plan")


def test_a_provider_onnxruntime_dropped_is_one_error_naming_it(tmp_path):
    # a real CPU session is what onnxruntime hands back when a CUDA library is missing: the CPU alone
    path = tmp_path / "m.onnx"
    write_model(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert onnxfile.require_providers(session, ["CPUExecutionProvider"]) is session
    with pytest.raises(TmdeployError, match=r"could not enable CUDAExecutionProvider \(a CUDA or cuDNN library"):
        onnxfile.require_providers(session, [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"])
    with pytest.raises(TmdeployError, match=r"could not enable OpenVINOExecutionProvider for m\.onnx \(see its log"):
        onnxfile.require_providers(session, ["OpenVINOExecutionProvider"], " for m.onnx")
