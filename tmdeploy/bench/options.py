"""What ``tmdeploy bench`` can be asked, its defaults and their validation, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from tmdeploy.bench.backends import NAMES
from tmdeploy.bench.timing import Budget
from tmdeploy.errors import TmdeployError, UsageError, check_choice

DEVICES = ("cpu", "cuda")


@dataclass
class BenchOptions:
    device: str = "cpu"
    batches: tuple[int, ...] = (1, 32, 256)
    backends: tuple[str, ...] | None = None  # None: every backend for the device
    min_time: float = 1.0  # seconds of timed iterations per backend and batch size
    min_iterations: int = 10
    warmup: int = 3
    data: str | None = "digits"  # accuracy on its test split, INT8 calibration on its train split; None: no accuracy
    accuracy_limit: int | None = None  # at most this many test images
    compile_backend: str = "inductor"
    threads: int | None = None  # CPU threads for PyTorch and onnxruntime alike; None: each library's default
    seed: int = 0
    show_progress: bool = True

    def validate(self) -> None:
        check_choice(self.device, DEVICES, "--device")
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise UsageError(f"--batch needs positive batch sizes, got {self.batches}")
        unknown = [n for n in self.backends or () if n not in NAMES]
        if unknown or self.backends == ():
            raise UsageError(f"unknown backend '{unknown[0] if unknown else ''}'; choose from: {', '.join(NAMES)}")
        if not self.min_time >= 0 or self.min_iterations < 1 or self.warmup < 0:
            raise UsageError("--min-time must be >= 0, --min-iterations >= 1 and --warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.accuracy_limit is not None and self.accuracy_limit < 1:
            raise UsageError(f"--accuracy-limit must be at least 1, got {self.accuracy_limit}")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise TmdeployError("--device cuda: PyTorch sees no CUDA device on this machine")

    def budget(self) -> Budget:
        return Budget(min_time=self.min_time, min_iterations=self.min_iterations, warmup=self.warmup)
