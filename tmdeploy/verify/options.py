"""What ``tmdeploy check`` can be asked, its defaults and their validation, importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tmdeploy.errors import UsageError, check_choice
from tmdeploy.fileio import check_output
from tmdeploy.runtimes import CHECK_RUNTIMES, DEVICES, get, require, where
from tmdeploy.values import MAX_ITERATIONS, MAX_SEED, check_batches, check_option

MAX_CHECK_IMAGES = 1_000_000

RUNTIMES = CHECK_RUNTIMES  # what runs the ONNX file: the runtimes with a runner of their own (tmdeploy.runtimes)


@dataclass
class CheckOptions:
    batches: tuple[int, ...] = (1, 7)
    iterations: int = 2  # per batch size
    # None: seeded random inputs (batches × iterations); else a data spec or the user's data (see tmdeploy.data),
    # compared on every held-out image it has, or on the first ``limit``
    data: str | object | None = None
    limit: int | None = None
    seed: int = 0
    atol: float | None = None  # None: the default for the file's precision
    rtol: float | None = None
    min_top1: float | None = None
    save_inputs: Path | None = None
    save_outputs: Path | None = None
    localize: bool = False
    device: str = "cpu"  # the PyTorch reference always runs on the CPU
    cuda_options: dict | None = None  # onnxruntime CUDA provider options on top of FP32 arithmetic (optimize's)
    runtime: str = "onnxruntime"
    # an INT8 file of TensorRT's recipe (signed activations), judged on the CPU: in TensorRT's exact integer
    # arithmetic (its QDQ ops run one by one in float), not onnxruntime's x86 kernels, which can saturate
    # without VNNI. False: as onnxruntime deploys it (optimize's candidates, timed that way)
    tensorrt_int8_arithmetic: bool = True

    def validate(self) -> None:
        check_choice(self.device, DEVICES, "--device")
        check_choice(self.runtime, RUNTIMES, "--runtime")
        runtime = get(self.runtime, self.device)
        if runtime is None:
            raise UsageError(f"--runtime {self.runtime} runs on {'/'.join(where(self.runtime)).upper()}: "
                             f"not --device {self.device}")
        if self.localize and runtime.provider is None:
            raise UsageError("--localize runs onnxruntime on every intermediate tensor: "
                             f"not with --runtime {self.runtime}")
        require(runtime)  # before anything loads: a missing install is the one install hint
        if self.device == "cuda":  # before anything loads: an onnxruntime without the CUDA provider is one line
            from tmdeploy import onnxfile

            onnxfile.providers("cuda")
        check_batches(self.batches)
        check_option("--iterations", self.iterations, 1, MAX_ITERATIONS)
        if self.data is None and sum(self.batches) * self.iterations > MAX_CHECK_IMAGES:  # all made before the run
            raise UsageError(f"--batch {','.join(map(str, self.batches))} x --iterations {self.iterations} is "
                             f"{sum(self.batches) * self.iterations:,} random images, more than "
                             f"{MAX_CHECK_IMAGES:,}: lower either")
        check_option("--seed", self.seed, 0, MAX_SEED)
        for option, value, high in (("--atol", self.atol, math.inf), ("--rtol", self.rtol, math.inf),
                                    ("--min-top1", self.min_top1, 1.0)):
            if value is not None:
                check_option(option, value, 0.0, high)
        if self.limit is not None:
            if self.data is None:
                raise UsageError("--limit bounds the images of --data: give --data too")
            check_option("--limit", self.limit, 1, MAX_CHECK_IMAGES)
        if self.data is not None:
            from tmdeploy import data  # torch: only when there is a spec to check

            data.check_spec(self.data)
        for option, path in (("--save-inputs", self.save_inputs), ("--save-outputs", self.save_outputs)):
            if path is not None:
                check_output(path, option=option)
