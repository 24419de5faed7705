"""What ``tmdeploy bench`` can be asked, its defaults and their validation, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from tmdeploy.bench.backends import NAMES
from tmdeploy.bench.timing import Budget
from tmdeploy.errors import TmdeployError, UsageError, check_choice
from tmdeploy.values import MAX_ITERATIONS, MAX_SECONDS, MAX_SEED, MAX_THREADS, check_batches, check_distinct, check_option
from tmdeploy.verify.options import DEVICES


@dataclass
class BenchOptions:
    device: str = "cpu"
    batches: tuple[int, ...] = (1, 32, 256)
    backends: tuple[str, ...] | None = None  # None: every backend for the device
    min_time: float = 1.0  # seconds of timed iterations per backend and batch size
    min_iterations: int = 10
    warmup: int = 3
    # accuracy on its test split, INT8/FP16 calibration on its train split; "auto": the data the checkpoint
    # was trained on (its card says); None: no accuracy
    data: str | None = "auto"
    accuracy_limit: int | None = None  # at most this many test images
    compile_backend: str = "inductor"
    threads: int | None = None  # CPU threads for PyTorch and every ONNX runtime alike; None: each library's default
    seed: int = 0
    # accuracy floors (fractions): a backend below one fails, and `tmdeploy bench` exits 1; None: no floor
    min_top1: float | None = None
    min_agreement: float | None = None  # share of test images where its top-1 is PyTorch eager's
    show_progress: bool = True

    def validate(self) -> None:
        check_choice(self.device, DEVICES, "--device")
        check_batches(self.batches)
        unknown = [n for n in self.backends or () if n not in NAMES]
        if unknown or self.backends == ():
            raise UsageError(f"unknown backend '{unknown[0] if unknown else ''}'; choose from: {', '.join(NAMES)}")
        check_distinct("--backends", self.backends)
        check_option("--min-time", self.min_time, 0, MAX_SECONDS)
        check_option("--min-iterations", self.min_iterations, 1, MAX_ITERATIONS)
        check_option("--warmup", self.warmup, 0, MAX_ITERATIONS)
        check_option("--seed", self.seed, 0, MAX_SEED)
        if self.threads is not None:
            check_option("--threads", self.threads, 1, MAX_THREADS)
        import torch  # here, not at the top: the options import without torch

        if self.compile_backend not in torch.compiler.list_backends(exclude_tags=()):
            raise UsageError(f"unknown --compile-backend '{self.compile_backend}'; choose one of: "
                             f"{', '.join(torch.compiler.list_backends())}")
        if self.data not in (None, "auto"):
            from tmdeploy import data

            data.check_spec(self.data)
        for option, floor in (("--min-top1", self.min_top1), ("--min-agreement", self.min_agreement)):
            if floor is not None:
                check_option(option, floor, 0.0, 1.0)
                if self.data is None:
                    raise UsageError(f"{option} needs accuracy data: drop --data none")
        if self.accuracy_limit is not None and self.accuracy_limit < 1:
            raise UsageError(f"--accuracy-limit must be at least 1, got {self.accuracy_limit}")
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise TmdeployError("--device cuda: PyTorch sees no CUDA device on this machine")

    def budget(self) -> Budget:
        return Budget(min_time=self.min_time, min_iterations=self.min_iterations, warmup=self.warmup)
