"""What ``tmdeploy export`` writes besides the ONNX file (a TensorRT engine, a Triton repository), its
defaults and their validation, importable without torch or TensorRT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tmdeploy.engines.profiles import BatchProfile, parse_batch
from tmdeploy.engines.tensorrt import validate_workspace
from tmdeploy.errors import check_choice

FORMATS = ("onnx", "trt", "triton")
TRITON_MODELS = ("auto", "trt", "onnx")


@dataclass(frozen=True)
class EngineOptions:
    format: str = "onnx"
    batch: str = "1,32,256"  # TensorRT optimization profile MIN,OPT,MAX; its MAX is Triton's max_batch_size
    workspace_mib: int | None = None  # TensorRT workspace limit; None: TensorRT's own
    timing_cache: Path | None = None  # None: one beside the engine per TensorRT version and GPU
    force: bool = False  # rebuild the engine even when an identical one exists
    # what a Triton repository serves: an engine built here, or the ONNX file; "auto": an engine where
    # TensorRT is installed, else the ONNX file
    triton_model: str = "auto"

    def validate(self) -> None:
        check_choice(self.format, FORMATS, "--format")
        check_choice(self.triton_model, TRITON_MODELS, "--triton-model")
        self.profile()
        validate_workspace(self.workspace_mib)

    def profile(self) -> BatchProfile:
        return parse_batch(self.batch)

    def builds_engine(self) -> bool:
        """Whether this target needs a TensorRT engine: --format trt, or a Triton repository serving one."""
        if self.format == "trt":
            return True
        if self.format != "triton":
            return False
        if self.triton_model != "auto":
            return self.triton_model == "trt"
        import importlib.util

        return importlib.util.find_spec("tensorrt") is not None
