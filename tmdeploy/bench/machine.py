"""What a timing was measured on: numbers without the machine behind them cannot be compared."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from tmdeploy.runtimes import VERSIONED, versions


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions that decide which kernels ONNX Runtime and PyTorch pick."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in wanted if f in flags]


def int8_kind(flags: list[str] | None = None) -> str:
    """The CPU's INT8 dot-product features, the words the README's INT8 tables name their rows' machines by."""
    flags = cpu_flags() if flags is None else flags
    if "amx_int8" in flags:
        return "AMX and VNNI" if any("vnni" in f for f in flags) else "AMX"
    vnni = [f for f in ("avx512_vnni", "avx_vnni") if f in flags]
    if vnni:
        return f"VNNI ({', '.join(vnni)})"
    return "AVX2 only (no VNNI or AMX)" if "avx2" in flags else "no AVX2"


def int8_recipes(flags: list[str] | None = None) -> tuple[tuple[str, ...], str]:
    """The onnxruntime INT8 recipes worth trying on this CPU (names in ``tmdeploy.export.precision.INT8_RECIPES``)
    and why.

    u8s8 products run on VNNI (AVX-512 or AVX) or AMX as exact int32 dot products; on plain AVX2 onnxruntime's
    kernels sum pairs of u8×s8 products in int16 (vpmaddubsw), which saturates unless the weights are 7-bit,
    as the default ``onnxruntime`` recipe's are (tmdeploy.export.int8_saturation). With VNNI the 8-bit
    ``onnxruntime-vnni`` recipe is worth timing too, and quantizing the residual Adds as well was the one
    variation that ran faster for rn26-tm in benchmarks/int8_recipes.py (1.75× FP32 at batch 32 against
    1.54–1.61× on a Zen 4 EPYC, two runs).
    """
    flags = cpu_flags() if flags is None else flags
    fast = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    if fast:
        return (("onnxruntime", "onnxruntime-vnni", "ort-shortcuts"),
                f"{', '.join(fast)}: u8s8 dot products without saturation, so 8-bit weights are exact too")
    return ("onnxruntime",), "no VNNI/AMX: only 7-bit weights keep AVX2's int16 pair sums from saturating"


def describe(device: str = "cpu", ort_threads: int | None = None) -> dict:
    """The machine, library versions and thread counts, as they are when called."""
    import onnxruntime
    import torch

    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "onnxruntime": onnxruntime.__version__,
        "onnxruntime_threads": ort_threads or "default", "device": device,
        **versions(),  # the optional runtimes' (None: not installed)
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        # what PyTorch's "fp32" really computes in on this GPU: cuDNN convolutions use TF32 unless told not to
        info["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        info["cuda"] = torch.version.cuda
    return info


def tensorrt_version() -> str | None:
    """TensorRT's version, None where it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def summary(info: dict) -> str:
    """One line naming the machine, for a table's caption."""
    where = f"{info['cpu']}, {info['cores']} cores"
    if info.get("gpu"):
        where = f"{info['gpu']} on {where}"
    return (f"{where}; torch {info['torch']} ({info['torch_threads']} threads), "
            f"onnxruntime {info['onnxruntime']} ({info['onnxruntime_threads']} threads)"
            + "".join(f", {name} {info[name]}" for name in VERSIONED if info.get(name)))
