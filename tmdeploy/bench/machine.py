"""What a timing was measured on: numbers without the machine behind them cannot be compared."""

from __future__ import annotations

import os
import platform
from pathlib import Path


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
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in wanted if f in flags]


def describe(device: str = "cpu", ort_threads: int | None = None) -> dict:
    """The machine, library versions and thread counts, as they are when called."""
    import onnxruntime
    import torch

    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "onnxruntime": onnxruntime.__version__,
        "onnxruntime_threads": ort_threads or "default", "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        # what PyTorch's "fp32" really computes in on this GPU: cuDNN convolutions use TF32 unless told not to
        info["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        info["cuda"] = torch.version.cuda
    return info


def summary(info: dict) -> str:
    """One line naming the machine, for a table's caption."""
    where = f"{info['cpu']}, {info['cores']} cores"
    if info.get("gpu"):
        where = f"{info['gpu']} on {where}"
    return (f"{where}; torch {info['torch']} ({info['torch_threads']} threads), "
            f"onnxruntime {info['onnxruntime']} ({info['onnxruntime_threads']} threads)")
