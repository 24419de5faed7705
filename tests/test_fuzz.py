"""Property-based fuzzing of everything that reads an untrusted file or array.

Whatever the bytes, dicts or arrays, the only exception that may escape ``checkpoint.load`` (and what the
CLI does next with a loaded checkpoint: ``check_finite``, ``build_model``), ``ModelMetadata.from_props``,
``metadata.read``, ``tmdeploy info``'s ``describe`` and the runtime's input checks is ``TmdeployError``
(``UsageError`` is one). A pickle that names a callable is refused, and its payload never runs.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import zipfile
from dataclasses import fields

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_runtime import write_model
from torch import nn

from tmdeploy import checkpoint
from tmdeploy.cli.info_cmd import describe
from tmdeploy.errors import TmdeployError
from tmdeploy.export import metadata
from tmdeploy.export.metadata import ModelMetadata


# TMDEPLOY_FUZZ_SCALE=20 runs twenty times the examples, for a deeper search than CI's.
SCALE = int(os.environ.get("TMDEPLOY_FUZZ_SCALE", "1"))
pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning",
                                        "ignore:Validating sparse tensor invariants:UserWarning",
                                        "ignore:Detected pickle protocol:UserWarning")


def fuzz(n: int):
    return settings(max_examples=n * SCALE, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


CARD = checkpoint.ModelCard(arch="rn26", arch_kwargs={"num_classes": 3, "in_chans": 1}, class_names=["a", "b", "c"],
                            input_size=(1, 16, 16), mean=[0.5], std=[0.25])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def seed_checkpoint(workdir) -> bytes:
    """A small but complete tmdeploy checkpoint (a few tensors, the full card): the mutation seed."""
    torch.manual_seed(0)
    path = checkpoint.save(workdir / "seed.pt", nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), CARD)
    checkpoint.load(path)  # the seed itself is valid
    return path.read_bytes()


@pytest.fixture(scope="module")
def seed_onnx(workdir) -> bytes:
    return write_model(workdir / "seed.onnx").read_bytes()


def marker(workdir):
    return workdir / "PAYLOAD_RAN"


def load_untrusted(workdir, data: bytes, suffix: str = ".pt", **kwargs):
    """checkpoint.load on ``data`` and what export does next; returns the Checkpoint or None if refused."""
    path = workdir / f"untrusted{suffix}"
    path.write_bytes(data)
    try:
        ckpt = checkpoint.load(path, **kwargs)
        checkpoint.check_finite(ckpt.state_dict)
    except TmdeployError as err:
        assert str(err) and "\n" not in str(err).strip(), repr(str(err))
        return None
    finally:
        assert not marker(workdir).exists(), "a pickle payload ran while loading"
    assert isinstance(ckpt.card, checkpoint.ModelCard) and ckpt.card.class_names
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.state_dict.items())
    return ckpt


# ---- building blocks --------------------------------------------------------------------------------


@st.composite
def mutations(draw, seed: bytes) -> bytes:
    """``seed`` with a few flips, overwrites, insertions, deletions and/or a truncation."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


SCALARS = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=12)
           | st.binary(max_size=12))
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int64,
          torch.bool, torch.complex64]


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    t = torch.zeros(shape, dtype=dtype)
    if t.numel() and dtype.is_floating_point:
        t.view(-1)[0] = draw(st.sampled_from([0.0, 1.5, math.nan, math.inf, -math.inf]))
    kind = draw(st.sampled_from(["plain", "plain", "transposed", "sparse"]))
    if kind == "transposed" and t.ndim >= 2:
        t = t.transpose(0, 1)
    elif kind == "sparse" and t.ndim >= 1 and dtype not in (torch.bfloat16, torch.float16, torch.complex64):
        t = t.to_sparse()
    return t


VALUES = st.recursive(SCALARS | tensors(), lambda inner: (
    st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), inner, max_size=4)), max_leaves=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

CARD_DICT = {"format": checkpoint.FORMAT, "format_version": 1, "tmdeploy_version": "0", "arch": "rn26",
             "arch_kwargs": {"num_classes": 3, "in_chans": 1}, "class_names": ["a", "b", "c"],
             "input_size": [1, 16, 16], "mean": [0.5], "std": [0.25], "extra": {}}


@st.composite
def odd_cards(draw, values):
    """The valid card dict with some keys dropped or replaced by odd values, and odd keys added."""
    card = dict(CARD_DICT)
    for key in draw(st.lists(st.sampled_from(sorted(card)), max_size=4, unique=True)):
        if draw(st.booleans()):
            del card[key]
        else:
            card[key] = draw(values)
    card.update(draw(st.dictionaries(st.text(max_size=8), values, max_size=2)))
    return card


def evil_pickle(path) -> bytes:
    """A protocol-0 pickle that, unpickled by plain pickle, calls builtins.open(path, "w")."""
    return b"cbuiltins\nopen\n(V" + str(path).encode() + b"\nVw\ntR."


# ---- checkpoint.load --------------------------------------------------------------------------------


@fuzz(120)
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".pt", ".safetensors", ".bin"]))
@example(data=b"PK\x03\x04", suffix=".pt")
@example(data=b"\x00" * 8 + b"{", suffix=".pt")
@example(data=struct.pack("<Q", 2 ** 63) + b"{}", suffix=".safetensors")
@example(data=b"\x80\x02}q\x00.", suffix=".pt")  # a bare (non-zip) pickle of {}
def test_random_bytes(workdir, data, suffix):
    load_untrusted(workdir, data, suffix)


@fuzz(100)
@given(st.data())
def test_mutated_checkpoints(workdir, seed_checkpoint, data):
    load_untrusted(workdir, data.draw(mutations(seed_checkpoint)))


@fuzz(80)
@given(st.data())
def test_mutated_pickle_inside_a_valid_zip(workdir, seed_checkpoint, data):
    """The same, aimed at the pickle (data.pkl), which torch's weights-only unpickler must refuse or parse."""
    src = zipfile.ZipFile(io.BytesIO(seed_checkpoint))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("data.pkl"):
                body = data.draw(mutations(body) | st.just(evil_pickle(marker(workdir))))
            out.writestr(info, body)
    load_untrusted(workdir, buf.getvalue())


PICKLES = (VALUES.filter(lambda v: not isinstance(v, torch.Tensor)).map(lambda v: pickle.dumps(v, protocol=2))
           | st.binary(max_size=64))


@fuzz(60)
@given(members=st.lists(st.tuples(
    st.sampled_from(["archive/data.pkl", "archive/version", "archive/byteorder", "archive/data/0",
                     "archive/.data/version", "data.pkl", "../escape/data.pkl", "archive/data/99999999999"])
    | st.text(min_size=1, max_size=20),
    PICKLES | st.sampled_from([b"3\n", b"little", b"big", b""])), max_size=6),
    compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]), evil=st.booleans())
def test_zip_archives_with_odd_members(workdir, members, compression, evil):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        if evil:
            zf.writestr("archive/data.pkl", evil_pickle(marker(workdir)))
            zf.writestr("archive/version", b"3\n")
        for name, body in members:
            try:
                zf.writestr(name, body)
            except (ValueError, IndexError, UnicodeEncodeError):  # names zipfile itself will not write
                pass
    load_untrusted(workdir, buf.getvalue())


@fuzz(80)
@given(payload=odd_cards(VALUES) | st.dictionaries(st.text(max_size=8), VALUES, max_size=4) | VALUES,
       state=st.sampled_from(["valid", "odd", "none"]), odd_state=VALUES, arch=st.sampled_from([None, "rn26", "nope"]))
def test_torch_files_with_odd_contents(workdir, payload, state, odd_state, arch):
    if isinstance(payload, dict) and state != "none":
        payload["state_dict"] = {"w": torch.ones(3, 2), "b": torch.zeros(3)} if state == "valid" else odd_state
    buf = io.BytesIO()
    torch.save(payload, buf)
    load_untrusted(workdir, buf.getvalue(), arch=arch)


def safetensors_file(header, body: bytes = b"", length_delta: int = 0) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", max(len(raw) + length_delta, 0)) + raw + body


ST_DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "X9", 5, None])


@fuzz(100)
@given(tensors_=st.dictionaries(st.text(min_size=1, max_size=8), st.fixed_dictionaries(
    {"dtype": ST_DTYPES, "shape": st.lists(st.integers(-2, 2 ** 40), max_size=3),
     "data_offsets": st.lists(st.integers(-1, 64), min_size=0, max_size=3)}), max_size=3),
       meta=st.none() | odd_cards(JSON_VALUES).map(json.dumps) | st.text(max_size=30)
       | st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
       extra_meta=st.dictionaries(st.text(max_size=6), st.text(max_size=6) | st.integers(), max_size=2),
       body=st.binary(max_size=64), length_delta=st.sampled_from([0, 0, 0, -1, 1, 2 ** 20]),
       raw=st.none() | st.binary(max_size=40))
@example(tensors_={}, meta="[" * 100000 + "]" * 100000, extra_meta={}, body=b"", length_delta=0, raw=None)
@example(tensors_={}, meta=json.dumps({**CARD_DICT, "input_size": [1e400, 16, 16]}).replace("1e400", "Infinity"),
         extra_meta={}, body=b"", length_delta=0, raw=None)
def test_safetensors_headers_with_odd_json(workdir, tensors_, meta, extra_meta, body, length_delta, raw):
    header = dict(tensors_)
    metadata_ = dict(extra_meta)
    if meta is not None:
        metadata_[checkpoint.SAFETENSORS_METADATA_KEY] = meta
    if metadata_:
        header["__metadata__"] = metadata_
    load_untrusted(workdir, safetensors_file(raw if raw is not None else header, body, length_delta), ".safetensors")


def test_a_valid_safetensors_header_really_loads(workdir):
    """The fuzzed header layout is the real one: with sane values it loads (so the fuzz reaches our code)."""
    body = np.arange(6, dtype=np.float32).tobytes()
    header = {"w": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 24]},
              "__metadata__": {checkpoint.SAFETENSORS_METADATA_KEY: json.dumps(CARD_DICT)}}
    ckpt = load_untrusted(workdir, safetensors_file(header, body), ".safetensors")
    assert ckpt is not None and ckpt.card.class_names == ["a", "b", "c"] and ckpt.state_dict["w"].shape == (3, 2)


ARCH_OPTIONS = st.dictionaries(
    st.sampled_from(["num_classes", "in_chans", "template_ratio", "groups", "reduction", "width", "depth"]),
    st.none() | st.booleans() | st.integers(-3, 2 ** 62) | st.floats() | st.text(max_size=4), max_size=3)


@fuzz(30)
@given(arch=st.sampled_from(["wrn16-cls", "rn26-tm", "rn26-sge", "rn26-rescnet", "rn26-convmix"]),
       options=ARCH_OPTIONS, state=st.dictionaries(st.sampled_from(["stem.0.weight", "head.fc.weight", "x"]),
                                                    tensors().filter(lambda t: t.layout == torch.strided),
                                                    max_size=2))
@example(arch="rn26-tm", options={"num_classes": 3, "in_chans": 1, "template_ratio": 1e9}, state={})
@example(arch="wrn16-cls", options={"num_classes": 2 ** 62, "in_chans": 1}, state={})
def test_build_model_with_odd_architecture_options(arch, options, state):
    """Options come from the file: building never allocates what they ask for before the weights fit."""
    card = checkpoint.ModelCard(arch=arch, arch_kwargs={"num_classes": 3, "in_chans": 1, **options},
                                class_names=["a", "b", "c"], input_size=(1, 16, 16), mean=[0.5], std=[0.25])
    with pytest.raises(TmdeployError):
        checkpoint.Checkpoint(card, state).build_model()


# ---- ONNX metadata ----------------------------------------------------------------------------------

VALID_PROPS = ModelMetadata(arch="tiny", class_names=["cat", "dog"], input_size=[1, 8, 8], mean=[0.5], std=[0.25],
                            outputs=["logits"]).to_props()
FIELDS = [f.name for f in fields(ModelMetadata)]
PROP_TEXT = (st.text(max_size=30) | JSON_VALUES.map(json.dumps)
             | st.sampled_from(["NaN", "Infinity", "-1", "1e999", "[1, 8, 8]", "[1e400]", "[true, 8, 8]", "\"x\"",
                                "[]", "[\"logits\", \"logits\"]", "9" * 5000, "[" * 5000 + "]" * 5000]))


@fuzz(150)
@given(base=st.sampled_from([{}, VALID_PROPS]),
       changes=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), PROP_TEXT, max_size=5),
       dropped=st.lists(st.sampled_from(FIELDS), max_size=3))
def test_metadata_from_generated_props(base, changes, dropped):
    props = {k: v for k, v in {**base, **changes}.items() if k not in dropped}
    try:
        meta = ModelMetadata.from_props(props)
    except TmdeployError:
        return
    # what the runtime relies on holds for whatever was accepted, and it survives a round trip
    c, h, w = meta.input_size
    assert min(c, h, w) >= 1 and len(meta.mean) == len(meta.std) == c and meta.class_names
    assert all(math.isfinite(v) for v in meta.mean) and all(math.isfinite(s) and s > 0 for s in meta.std)
    assert "logits" in meta.outputs
    assert ModelMetadata.from_props(meta.to_props()) == meta


@fuzz(100)
@given(st.data())
def test_metadata_read_and_info_on_mutated_onnx(workdir, seed_onnx, data):
    path = workdir / "untrusted.onnx"
    path.write_bytes(data.draw(mutations(seed_onnx)))
    try:
        metadata.read(path)
    except TmdeployError:
        pass
    try:
        info = describe(path)  # `tmdeploy info` works on any file that parses, with or without our metadata
    except TmdeployError:
        return
    json.dumps(info)  # what `info --json` prints


# ---- runtime input checks ---------------------------------------------------------------------------

PLAIN = ModelMetadata.from_props(VALID_PROPS)
BAKED = ModelMetadata.from_props({**VALID_PROPS, "layout": "NHWC", "input_dtype": "uint8", "preprocess": "baked"})
ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float16, np.float64, np.uint8, np.int32, np.bool_, np.complex64,
                           np.dtype(">f4"), np.dtype("U2")]),
    shape=st.sampled_from([(), (2,), (8, 8), (1, 8, 8), (2, 1, 8, 8), (2, 8, 8, 1), (0, 1, 8, 8), (1, 3, 8, 8),
                           (1, 1, 8, 8, 1)]),
    elements=None, fill=None)


@fuzz(100)
@given(images=ARRAYS | st.lists(st.lists(st.floats(), max_size=3), max_size=3)
       | st.just(np.array([None, "a", 1.5], dtype=object)),
       meta=st.sampled_from([PLAIN, BAKED]), raw=st.booleans(), check=st.booleans())
@example(images=np.full((1, 1, 8, 8), 1e300), meta=PLAIN, raw=False, check=True)  # finite, but not in float32
@example(images=[[1.0], [1.0, 2.0]], meta=PLAIN, raw=False, check=True)  # ragged
def test_runtime_input_checks(images, meta, raw, check):
    try:
        x = meta.graph_input(images, raw=raw, check_finite=check)
    except TmdeployError:
        return
    c, h, w = meta.input_size
    expected = (h, w, c) if meta.preprocess == "baked" else (c, h, w)
    assert x.shape[1:] == expected and len(x) >= 1
    assert x.dtype == (np.uint8 if meta.preprocess == "baked" else np.float32) and x.flags.c_contiguous
    if check and x.dtype == np.float32:
        assert np.isfinite(x).all()
