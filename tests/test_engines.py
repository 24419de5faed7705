"""TensorRT engine planning and Triton repositories: everything decided before TensorRT runs, tested without it."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import onnx
import pytest
from test_runtime import CLASSES, write_model

from tmdeploy import __version__
from tmdeploy.engines import BatchProfile, parse_batch
from tmdeploy.engines import tensorrt as trt_engine
from tmdeploy.engines import triton
from tmdeploy.engines.profiles import profile_shapes
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.export import metadata
from tmdeploy.fileio import file_sha256

H100 = trt_engine.Environment("10.13.3.9", "NVIDIA H100 80GB HBM3", "9.0")
no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("onnx") / "tiny.onnx", patch=True)


def spec_for(path, env=H100, batch="1,8,32", workspace=None, precision="fp16"):
    meta = dataclasses.replace(metadata.read(path), precision=precision)
    return trt_engine.build_spec(meta, file_sha256(path), parse_batch(batch), workspace, env)


def fake_engine(tmp_path, onnx_path, *, batch="1,8,32", payload=b"engine bytes"):
    """An engine file with a real sidecar, as build_engine would leave them (the bytes are not a real plan)."""
    engine = tmp_path / "tiny.plan"
    engine.write_bytes(payload)
    spec = spec_for(onnx_path, batch=batch)
    sidecar = trt_engine.make_sidecar(spec, engine_sha256=file_sha256(engine), onnx_path=onnx_path,
                                      meta=metadata.read(onnx_path), layer_precisions={"FP16": 2})
    trt_engine.write_sidecar(engine, sidecar)
    return engine, spec


# ---- batch profiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("8", (8, 8, 8)), ("1,32,256", (1, 32, 256)), (" 1, 2 ,2", (1, 2, 2))])
def test_parse_batch(text, expected):
    assert parse_batch(text) == BatchProfile(*expected)
    assert str(parse_batch(text)) == ",".join(map(str, expected))


@pytest.mark.parametrize("text", ["0", "1,2", "4,2,8", "1,8,4", "a", "1,2,3,4", "-1", "", "1.5", "1,,3"])
def test_parse_batch_rejects_naming_the_value(text):
    with pytest.raises(UsageError, match=f"batch profile '{text}'"):
        parse_batch(text)


def test_profile_shapes_follow_the_graph_layout(tmp_path):
    nchw = metadata.read(write_model(tmp_path / "a.onnx", size=(3, 8, 6)))
    nhwc = metadata.read(write_model(tmp_path / "b.onnx", size=(3, 8, 6), baked=True))
    batch = BatchProfile(1, 4, 16)
    assert profile_shapes(nchw, batch) == {"min": [1, 3, 8, 6], "opt": [4, 3, 8, 6], "max": [16, 3, 8, 6]}
    assert profile_shapes(nhwc, batch)["max"] == [16, 8, 6, 3]


# ---- precision plans ------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, version, expected", [
    ("fp32", "10.13.3", (False, False, False)),
    ("fp16", "10.0.1", (False, True, False)),
    ("int8", "10.13.3", (False, False, True)),
    ("fp16", "11.0.0", (True, False, False)),
    ("int8", "11.2.1", (True, False, False)),
    ("fp32", "12.0", (True, False, False)),
])
def test_precision_plan_per_tensorrt_major(precision, version, expected):
    assert dataclasses.astuple(trt_engine.precision_plan(precision, version)) == expected


def test_precision_plan_refuses_old_tensorrt_and_unknown_precision():
    with pytest.raises(TmdeployError, match="TensorRT 8.6.1 is too old.*10 or newer"):
        trt_engine.precision_plan("fp16", "8.6.1")
    with pytest.raises(TmdeployError, match="unknown precision 'bf16'"):
        trt_engine.precision_plan("bf16", "10.13")


# ---- cache keys, sidecars, environments ---------------------------------------------------------------


def test_cache_key_is_stable_and_changes_with_everything_that_changes_the_engine(onnx_file):
    spec = spec_for(onnx_file)
    key = trt_engine.cache_key(spec)
    assert key == trt_engine.cache_key(spec_for(onnx_file)) and len(key) == 64
    variants = [
        dataclasses.replace(spec, onnx_sha256="0" * 64),
        spec_for(onnx_file, batch="1,8,64"),
        spec_for(onnx_file, batch="1,16,32"),
        spec_for(onnx_file, precision="int8"),
        spec_for(onnx_file, workspace=1024),
        spec_for(onnx_file, env=dataclasses.replace(H100, tensorrt="10.14.1")),
        spec_for(onnx_file, env=dataclasses.replace(H100, gpu="NVIDIA H200")),
        spec_for(onnx_file, env=dataclasses.replace(H100, compute_capability="8.9")),
        spec_for(onnx_file, env=dataclasses.replace(H100, tensorrt="11.0.0")),  # also flips the precision plan
        dataclasses.replace(spec, tmdeploy_version="99.0"),
    ]
    keys = {trt_engine.cache_key(v) for v in variants}
    assert len(keys) == len(variants) and key not in keys


def test_sidecar_round_trip_and_engine_reuse(tmp_path, onnx_file):
    engine, spec = fake_engine(tmp_path, onnx_file)
    sidecar = trt_engine.read_sidecar(engine)
    assert trt_engine.sidecar_path(engine).name == "tiny.plan.json"
    assert sidecar["tensorrt"] == H100.tensorrt and sidecar["gpu"] == H100.gpu and sidecar["compute_capability"] == "9.0"
    assert sidecar["precision"] == "fp16" and sidecar["onnx_sha256"] == file_sha256(onnx_file)
    assert sidecar["profile"] == {"input": "images", "min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [32, 1, 8, 8]}
    assert sidecar["batch"] == {"min": 1, "opt": 8, "max": 32} and sidecar["tmdeploy_version"] == __version__
    assert sidecar["build_options"] == {"workspace_mib": None, "strongly_typed": False, "fp16": True, "int8": False}
    assert trt_engine.sidecar_metadata(sidecar).class_names == CLASSES
    key = trt_engine.cache_key(spec)
    assert trt_engine.engine_is_current(engine, key)
    assert not trt_engine.engine_is_current(engine, trt_engine.cache_key(spec_for(onnx_file, batch="4")))
    engine.write_bytes(b"engine bytes, truncated or replaced")
    assert not trt_engine.engine_is_current(engine, key)
    trt_engine.sidecar_path(engine).write_text("{not json")
    assert not trt_engine.engine_is_current(engine, key)
    assert not trt_engine.engine_is_current(tmp_path / "absent.plan", key)


def test_read_sidecar_errors(tmp_path):
    engine = tmp_path / "m.plan"
    with pytest.raises(TmdeployError, match="m.plan has no sidecar m.plan.json: rebuild"):
        trt_engine.read_sidecar(engine)
    trt_engine.sidecar_path(engine).write_text(json.dumps({"something": "else"}))
    with pytest.raises(TmdeployError, match="is not a tmdeploy engine sidecar"):
        trt_engine.read_sidecar(engine)


def test_engine_from_another_tensorrt_or_gpu_must_be_rebuilt(tmp_path, onnx_file):
    engine, _ = fake_engine(tmp_path, onnx_file)
    sidecar = trt_engine.read_sidecar(engine)
    trt_engine.check_compatible(sidecar, H100, engine)
    with pytest.raises(TmdeployError, match=r"built with TensorRT 10.13.3.9 .*this machine has TensorRT 10.14.1.*rebuild"):
        trt_engine.check_compatible(sidecar, dataclasses.replace(H100, tensorrt="10.14.1"), engine)
    a100 = trt_engine.Environment(H100.tensorrt, "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(TmdeployError, match=r"for NVIDIA H100 80GB HBM3 \(sm 9.0\).*NVIDIA A100-SXM4-80GB \(sm 8.0\).*"
                                            r"rebuild the engine here from .*tiny.onnx"):
        trt_engine.check_compatible(sidecar, a100, engine)


def test_default_timing_cache_is_per_tensorrt_and_gpu_generation(tmp_path):
    assert trt_engine.default_timing_cache(tmp_path / "m.plan", H100) == tmp_path / "timing-trt10.13.3.9-sm90.cache"


# ---- layer precision check (engine inspector JSON) ------------------------------------------------------


def layer(name, kind, *formats, trt11=False):
    def tensor(i, fmt):
        entry = {"Name": f"{name}:{i}", "Location": "Device", "Dimensions": [8, 4, 8, 8]}
        entry.update({"Datatype": fmt, "Format": "Channel major"} if trt11 else {"Format/Datatype": fmt})
        return entry

    return {"Name": name, "LayerType": kind, "Inputs": [tensor(0, formats[0])], "Outputs": [tensor(1, formats[-1])]}


FP32 = "Row major linear FP32"
FP16 = "Channel major FP16 format where channel % 8 == 0"
INT8 = "Channel major INT8 format where channel % 32 == 0"


def engine_info(*layers):
    return json.dumps({"Layers": list(layers), "Bindings": ["images", "logits"]})


@pytest.mark.parametrize("text, dtype", [
    (FP32, "FP32"), (FP16, "FP16"), (INT8, "INT8"), ("Half", "FP16"), ("Float", "FP32"), ("Int8 NC/32", "INT8"),
    ("UInt8 row major", "UINT8"), ("BFloat16", "BF16"), ("FP8 linear", "FP8"), ("Int32", "INT32"), ("N/A", None),
])
def test_tensor_dtype_reads_tensorrt_10_and_11_entries(text, dtype):
    assert trt_engine.tensor_dtype({"Format/Datatype": text}) == dtype
    assert trt_engine.tensor_dtype({"Datatype": text}) == dtype


def test_fp16_engine_passes_when_every_compute_layer_is_fp16():
    info = engine_info(
        layer("Reformatting CopyNode for Input Tensor 0", "Reformat", FP32, FP16),
        layer("/conv1/Conv + /relu/Relu", "CaskConvolution", FP16),
        layer("/fc/Gemm", "CaskGemmConvolution", FP16, FP32),
        layer("/head/MatMul", "gemm", "Half", trt11=True),
        layer("/softmax", "CaskSoftMaxV2", FP32),
    )
    assert trt_engine.check_layer_precisions(info, "fp16") == {"FP16": 3}


def test_fp16_that_silently_became_fp32_is_refused():
    info = engine_info(layer("/conv1/Conv", "CaskConvolution", FP16), layer("/conv2/Conv", "CaskConvolution", FP32),
                       layer("/fc/Gemm", "CaskGemmConvolution", "Float", trt11=True))
    with pytest.raises(TmdeployError, match=r"not build the fp16 model in fp16: 1 of 3 .*/conv2/Conv, /fc/Gemm.*not written"):
        trt_engine.check_layer_precisions(info, "fp16")
    all_fp32 = engine_info(layer("/conv1/Conv", "CaskConvolution", FP32))
    with pytest.raises(TmdeployError, match="0 of 1 layers"):
        trt_engine.check_layer_precisions(all_fp32, "fp16")


def test_int8_needs_int8_compute_layers_but_may_keep_some_in_fp32():
    mixed = engine_info(layer("/conv1/Conv", "CaskConvolution", INT8, INT8), layer("/fc/Gemm", "CaskGemmConvolution", FP32))
    assert trt_engine.check_layer_precisions(mixed, "int8") == {"INT8": 1, "FP32": 1}
    fell_back = engine_info(layer("/conv1/Conv", "CaskConvolution", FP16), layer("/fc/Gemm", "CaskGemmConvolution", FP32))
    with pytest.raises(TmdeployError, match="not build the int8 model in int8"):
        trt_engine.check_layer_precisions(fell_back, "int8")


def test_precision_check_without_recognizable_compute_layers_looks_at_every_layer():
    opaque = engine_info(layer("{ForeignNode[/conv1/Conv.../fc/Gemm]}", "Myelin", FP16))
    assert trt_engine.check_layer_precisions(opaque, "fp16") == {}
    with pytest.raises(TmdeployError, match="int8"):
        trt_engine.check_layer_precisions(opaque, "int8")


def test_precision_check_needs_detailed_layer_information():
    names_only = json.dumps({"Layers": ["/conv1/Conv", "/fc/Gemm"], "Bindings": []})
    assert trt_engine.check_layer_precisions(names_only, "fp32") == {}
    with pytest.raises(TmdeployError, match="no detailed layer information"):
        trt_engine.check_layer_precisions(names_only, "fp16")
    assert trt_engine.check_layer_precisions(engine_info(layer("/c", "CaskConvolution", FP32)), "fp32") == {"FP32": 1}


# ---- build_engine without TensorRT ---------------------------------------------------------------------


@no_tensorrt
def test_build_engine_without_tensorrt_names_the_install_step(tmp_path, onnx_file):
    with pytest.raises(TmdeployError, match=r'TensorRT is not installed: pip install "tmdeploy\[gpu\]" \(tensorrt\)') as err:
        trt_engine.build_engine(onnx_file, tmp_path / "m.plan", batch=BatchProfile(1, 8, 32))
    assert "\n" not in str(err.value) and not (tmp_path / "m.plan").exists()


def test_build_engine_checks_its_arguments_before_tensorrt(tmp_path, onnx_file):
    with pytest.raises(UsageError, match="workspace '0'"):
        trt_engine.build_engine(onnx_file, batch="1,8,32", workspace_mib=0)
    with pytest.raises(UsageError, match="batch profile '8,1'"):
        trt_engine.build_engine(onnx_file, batch="8,1")
    with pytest.raises(TmdeployError, match="ONNX file not found"):
        trt_engine.build_engine(tmp_path / "missing.onnx", batch="1")


def test_build_engine_refuses_onnxruntime_int8_before_tensorrt(tmp_path, onnx_file):
    """An INT8 graph quantized for onnxruntime (unsigned activations) is named as such, before TensorRT loads
    and before anything is written; TensorRT's own recipe passes the check."""
    from tmdeploy.export.precision import INT8_RECIPES, lower_precision

    fp32, meta = onnx.load(str(onnx_file)), metadata.read(onnx_file)
    images = np.random.default_rng(0).standard_normal((8, *meta.sample_shape)).astype(np.float32)
    paths = {}
    for recipe in ("onnxruntime", "tensorrt"):
        lowered = lower_precision(fp32, "int8", meta=meta, calibration=images, show_progress=False,
                                  int8_recipe=INT8_RECIPES[recipe])
        paths[recipe] = tmp_path / f"{recipe}.onnx"
        onnx.save(lowered, str(paths[recipe]))
    with pytest.raises(UsageError, match="quantized for onnxruntime .* --int8-target tensorrt") as err:
        trt_engine.build_engine(paths["onnxruntime"], tmp_path / "m.plan", batch="1,8,32")
    assert "\n" not in str(err.value) and not (tmp_path / "m.plan").exists()
    trt_engine.check_signed_int8(onnx.load(str(paths["tensorrt"])), paths["tensorrt"])


# ---- Triton model repositories --------------------------------------------------------------------------


def parse_config(path):
    model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (serve extra) parses Triton configs")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config.ModelConfig())


def model_type_name(value):
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(value)


def test_onnx_repository_files(tmp_path, onnx_file):
    out = triton.write_model_repository(onnx_file, tmp_path / "repo", preferred_batch_sizes=[8, 32])
    assert out == tmp_path / "repo" / "tiny"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["1", "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert (out / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert (out / "labels.txt").read_text().splitlines() == CLASSES
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["tiny"]  # no temporary directory left


def test_onnx_repository_config_parses_back(tmp_path, onnx_file):
    out = triton.write_model_repository(onnx_file, tmp_path, name="clf", preferred_batch_sizes=[8, 32],
                                        max_queue_delay_us=250, instance_count=2)
    config = parse_config(out / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == ("clf", "onnxruntime_onnx", 256)
    (images,) = config.input
    assert (images.name, list(images.dims)) == ("images", [1, 8, 8])
    assert model_type_name(images.data_type) == "TYPE_FP32"
    logits, patch = config.output
    assert (logits.name, list(logits.dims), logits.label_filename) == ("logits", [3], "labels.txt")
    assert (patch.name, list(patch.dims), patch.label_filename) == ("patch_logits", [3, 8, 8], "")
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert [g.count for g in config.instance_group] == [2]


def test_baked_repository_takes_uint8_pixels(tmp_path):
    baked = write_model(tmp_path / "baked.onnx", baked=True, size=(3, 8, 6))
    config = parse_config(triton.write_model_repository(baked, tmp_path / "repo") / "config.pbtxt")
    assert model_type_name(config.input[0].data_type) == "TYPE_UINT8" and list(config.input[0].dims) == [8, 6, 3]
    assert not config.dynamic_batching.preferred_batch_size


def test_rewriting_a_repository_replaces_only_its_own_files(tmp_path, onnx_file):
    out = triton.write_model_repository(onnx_file, tmp_path, max_batch_size=16)
    (out / "notes.txt").write_text("the user's")  # issue 22: the user's files in the model's directory stay
    triton.write_model_repository(onnx_file, tmp_path, max_batch_size=32)
    assert "max_batch_size: 32" in (out / "config.pbtxt").read_text() and (out / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "tiny.onnx"] == ["tiny"]


def test_plan_repository_from_the_sidecar(tmp_path, onnx_file):
    engine, _ = fake_engine(tmp_path, onnx_file)
    out = triton.write_model_repository(engine, tmp_path / "repo")
    assert (out / "1" / "model.plan").read_bytes() == engine.read_bytes()
    config = parse_config(out / "config.pbtxt")
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 32)  # the profile's maximum
    assert [o.name for o in config.output] == ["logits", "patch_logits"] and list(config.input[0].dims) == [1, 8, 8]
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    with pytest.raises(UsageError, match="max_batch_size 64 exceeds the engine's profile maximum 32"):
        triton.write_model_repository(engine, tmp_path / "repo", max_batch_size=64)


def test_plan_repository_checks_the_onnx_it_reads(tmp_path, onnx_file):
    engine, _ = fake_engine(tmp_path, onnx_file)
    other = write_model(tmp_path / "other.onnx", seed=7)
    with pytest.raises(TmdeployError, match="other.onnx is not the ONNX file .*tiny.plan was built from"):
        triton.write_model_repository(engine, tmp_path / "repo", onnx_path=other)
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(onnx_file.read_bytes())
    assert (triton.write_model_repository(engine, tmp_path / "repo", onnx_path=copy) / "1" / "model.plan").is_file()
    (tmp_path / "min8").mkdir()
    min8, _ = fake_engine(tmp_path / "min8", onnx_file, batch="8,8,32")
    with pytest.raises(TmdeployError, match="profile starts at batch 8.*rebuild it with MIN=1"):
        triton.write_model_repository(min8, tmp_path / "repo")


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0}, "max_batch_size 0"),
    ({"max_batch_size": 8, "preferred_batch_sizes": [4, 16]}, r"preferred batch size 16: expected an integer in 1..8"),
    ({"max_queue_delay_us": -1}, "max_queue_delay_us -1"),
    ({"instance_count": 0}, "instance_count 0"),
    ({"name": "../evil"}, "model name '../evil'"),
])
def test_repository_options_are_validated(tmp_path, onnx_file, kwargs, message):
    with pytest.raises(UsageError, match=message):
        triton.write_model_repository(onnx_file, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_repository_refuses_graphs_triton_cannot_batch(tmp_path):
    fixed = write_model(tmp_path / "fixed.onnx", batch=4)
    with pytest.raises(TmdeployError, match="the graph's batch axis is fixed at 4"):
        triton.write_model_repository(fixed, tmp_path / "repo")
    with pytest.raises(UsageError, match=r"expected an \.onnx file or a TensorRT engine \(\.plan, \.engine\)"):
        triton.write_model_repository(tmp_path / "model.pt", tmp_path / "repo")


def test_model_names_default_to_a_clean_file_stem():
    assert triton.model_name("runs/rn26 v2+fp16.onnx") == "rn26_v2_fp16"
    assert triton.model_name("x.onnx", "rn26-ours.fp16") == "rn26-ours.fp16"


def test_graph_signature_reads_the_onnx_graph(onnx_file):
    inputs, outputs = triton.graph_signature(onnx.load(str(onnx_file)))
    assert inputs == [triton.TensorSpec("images", "float32", "TYPE_FP32", (1, 8, 8))]
    assert [(o.name, o.dims) for o in outputs] == [("logits", (3,)), ("patch_logits", (3, 8, 8))]
