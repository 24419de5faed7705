"""onnxruntime, the core runtime: its CPU provider, and on CUDA its CUDA provider (IO binding, or its own CUDA
graph, in either layout) and its TensorRT provider. Every speed-up is measured against the CPU or CUDA
provider's FP32 file."""

from __future__ import annotations

from tmdeploy import onnxfile
from tmdeploy.runtimes.base import Line, Request, Runtime

# measured on an H100 (README, "On a GPU"): no QDQ pair was fused into an integer kernel
CUDA_INT8 = ("onnxruntime's CUDA provider runs QDQ convolutions in float (INT8 rounding at worse than FP32 speed, "
             "measured on an H100): INT8 on a GPU is TensorRT's job")
_GRAPH = {**onnxfile.CUDA_FP32, "enable_cuda_graph": "1"}


def plain(provider_options: dict) -> dict:
    """The options without onnxruntime's CUDA graph, which needs IO-bound fixed addresses: what polygraphy's
    runner and CLI can run; a graph replays the same kernels."""
    return {k: v for k, v in provider_options.items() if k != "enable_cuda_graph"}


def _open_cpu(runtime: Runtime, proto, request: Request):
    from tmdeploy.bench.sessions import OrtSession

    return OrtSession(proto, list(onnxfile.CPU), request.threads)


def _open_cuda(runtime: Runtime, proto, request: Request):
    from tmdeploy.bench.cuda import OrtCudaGraphSession, OrtIoBindingSession

    if runtime.provider == onnxfile.TENSORRT:
        return OrtIoBindingSession(proto, runtime.cuda_fallback_options, runtime.provider_options)
    if runtime.provider_options.get("enable_cuda_graph") == "1":
        return OrtCudaGraphSession(proto, plain(runtime.provider_options))
    return OrtIoBindingSession(proto, runtime.provider_options)


def _runner(runtime: Runtime, onnx_path, options):
    from tmdeploy.verify.runners import onnxrt_runner

    return onnxrt_runner(onnx_path, device=options.device, cuda_options=options.cuda_options)


def _reproduce(runtime: Runtime, line: Line) -> dict:
    """polygraphy's own line, without tmdeploy; on CUDA with the provider, TF32 off by NVIDIA's variable."""
    if runtime.device == "cpu":
        return {"command": f"polygraphy run candidates/{line.name}.onnx --onnxrt {line.loads}",
                "cwd": "the output folder", "tolerances": line.what}
    # polygraphy's CLI takes no provider options: NVIDIA's libraries read this variable instead of use_tf32=0
    providers = "tensorrt cuda" if runtime.provider == onnxfile.TENSORRT else "cuda"
    command = (f"NVIDIA_TF32_OVERRIDE=0 polygraphy run candidates/{line.name}.onnx --onnxrt --providers {providers} "
               f"{line.loads}")
    out = {"command": command, "cwd": "the output folder", "tolerances": line.what}
    unset = sorted(set(plain(line.provider_options)) - set(onnxfile.CUDA_FP32))
    if unset:
        out["note"] = (f"polygraphy's CLI cannot set {', '.join(unset)}: this line runs the file in the CUDA "
                       f"provider's default layout; the parity step ran it with {', '.join(unset)}")
    return out


def _tensorrt_provider() -> str | None:
    import onnxruntime as ort

    return None if onnxfile.TENSORRT in ort.get_available_providers() else f"this onnxruntime has no {onnxfile.TENSORRT}"


_CUDA = dict(device="cuda", label="onnxruntime", open=_open_cuda, runner=_runner, reproduce=_reproduce,
             provider=onnxfile.CUDA)
RUNTIMES = (
    Runtime("onnxruntime", "cpu", "onnxruntime", ("fp32", "fp16", "int8"), _open_cpu, _runner, _reproduce,
            provider=onnxfile.CPU[0], check=True),
    Runtime("onnxruntime", precisions=("fp32", "fp16"), provider_options=onnxfile.CUDA_FP32, int8_skipped=CUDA_INT8,
            check=True, **_CUDA),
    Runtime("onnxruntime-cuda-graph", precisions=("fp32", "fp16"), suffix="cuda-graph", provider_options=_GRAPH,
            **_CUDA),
    # channels-last convolutions: the fastest onnxruntime configuration for rn26-tm on the H100
    # (benchmarks/gpu_tm_cost.py, folded-padded form)
    Runtime("onnxruntime-cuda-graph-nhwc", precisions=("fp32", "fp16"), suffix="cuda-graph-nhwc",
            provider_options={**_GRAPH, "prefer_nhwc": "1"}, **_CUDA),
    Runtime("onnxruntime-tensorrt", precisions=("fp32", "fp16", "int8"), suffix="ort-trt", probe=_tensorrt_provider,
            cuda_fallback_options=onnxfile.CUDA_FP32, **{**_CUDA, "provider": onnxfile.TENSORRT, "runner": None}),
)
