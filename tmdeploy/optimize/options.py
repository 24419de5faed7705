"""What ``tmdeploy optimize`` can be asked, its defaults and their validation, importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from tmdeploy.errors import TmdeployError, UsageError, check_choice
from tmdeploy.export.options import DEFAULT_FORM, EXPORTERS, FORMS, PRECISIONS
from tmdeploy.fileio import check_output_dir
from tmdeploy.values import MAX_SECONDS, MAX_SEED, MAX_THREADS, check_batches, check_distinct, check_option

# what optimize writes into --out, named once: checked before the run, then written
OUTPUT_FILES = {"model": "model.onnx", "status": "status.json", "report": "report.md", "latency": "latency.png"}
TARGETS = ("cpu", "cuda")  # what runs there: tmdeploy.optimize.candidates.RUNTIMES
STRATEGIES = ("min-latency", "max-throughput", "max-throughput-under-latency")
# the recipe names of tmdeploy.export.precision.INT8_RECIPES (that module imports torch; this one must not)
INT8_RECIPE_NAMES = ("tensorrt", "onnxruntime", "ort-reduce-range", "ort-per-tensor", "ort-qoperator",
                     "ort-shortcuts", "ort-float-values")


@dataclass(frozen=True)
class OptimizeOptions:
    target: str = "cpu"
    # min-latency: lowest p50 at the smallest batch; max-throughput: most images/s at the largest batch;
    # max-throughput-under-latency: most images/s at any batch whose p99 stays within latency_ms
    strategy: str = "min-latency"
    latency_ms: float | None = None  # the bound of max-throughput-under-latency
    batches: tuple[int, ...] = (1, 32)
    max_top1_drop: float = 0.5  # percentage points of top-1 below PyTorch FP32 on the held-out split
    min_agreement: float = 0.99  # share of held-out images whose top-1 is PyTorch FP32's
    min_top1: float | None = None  # an absolute top-1 floor (fraction) as well; None: none
    forms: tuple[str, ...] | None = None  # TM export forms; None: all (--quick: the default form)
    precisions: tuple[str, ...] = PRECISIONS
    # INT8 recipes; None: on the CPU, the ones its features call for (tmdeploy.bench.machine.int8_recipes) and
    # tensorrt; on CUDA, tensorrt (INT8 on a GPU is TensorRT's)
    int8_recipes: tuple[str, ...] | None = None
    exporters: tuple[str, ...] = ("torchscript",)  # dynamo gives the same graph in ~10 s per export
    # what runs the files (tmdeploy.optimize.candidates.RUNTIMES); None: on the CPU, onnxruntime, and OpenVINO
    # (its FP32 and FP16 files) when it is installed; on CUDA, every one, onnxruntime's TensorRT provider
    # where this onnxruntime has it
    runtimes: tuple[str, ...] | None = None
    # accuracy on its test split, calibration on its train split; "auto": the data the checkpoint was trained on
    data: str = "auto"
    accuracy_limit: int | None = None  # at most this many held-out images; None: all (--quick: 256)
    atol: float | None = None  # parity tolerances; None: the precision's defaults (tmdeploy.verify.stats)
    rtol: float | None = None
    window_s: float = 0.5  # seconds of timed iterations per candidate in one timing window (--quick: 0.2)
    profile_s: float = 90.0  # time budget for timing windows, all batch sizes together (--quick: 10)
    stable_within: float = 0.03  # two windows agree: the same fastest (ties within this), its speed-up moved less
    # after the first window, candidates this many times slower than the fastest are not timed again
    screen_slower: float = 1.25
    threads: int | None = None  # onnxruntime intra-op threads; None: its default
    seed: int = 0
    quick: bool = False
    out: Path | None = None  # the output folder; None: <checkpoint stem>-optimized beside the checkpoint
    show_progress: bool = True

    def effective(self) -> "OptimizeOptions":
        """The options with --quick applied to what was left at None or its default."""
        if not self.quick:
            return self
        return replace(self, forms=self.forms or (DEFAULT_FORM,),
                       accuracy_limit=self.accuracy_limit or 256,
                       window_s=min(self.window_s, 0.2), profile_s=min(self.profile_s, 10.0))

    def validate(self) -> None:
        from tmdeploy.optimize.candidates import RUNTIMES  # it imports this module

        check_choice(self.target, TARGETS, "--target")
        check_choice(self.strategy, STRATEGIES, "--strategy")
        if (self.strategy == "max-throughput-under-latency") != (self.latency_ms is not None):
            raise UsageError("a latency bound (MS) goes with --strategy max-throughput-under-latency, and only there")
        if self.latency_ms is not None:
            check_option("--strategy max-throughput-under-latency MS", self.latency_ms, 1e-3, MAX_SECONDS * 1e3)
        check_batches(self.batches)
        check_option("--max-top1-drop", self.max_top1_drop, 0.0, 100.0)
        check_option("--min-agreement", self.min_agreement, 0.0, 1.0)
        if self.min_top1 is not None:
            check_option("--min-top1", self.min_top1, 0.0, 1.0)
        if self.target == "cuda" and "openvino" in (self.runtimes or ()):
            raise UsageError("--runtimes openvino: OpenVINO is a CPU runtime, not a --target cuda candidate")
        for option, values, choices in (("--forms", self.forms, FORMS), ("--precisions", self.precisions, PRECISIONS),
                                        ("--int8-recipes", self.int8_recipes, INT8_RECIPE_NAMES),
                                        ("--exporters", self.exporters, EXPORTERS),
                                        ("--runtimes", self.runtimes, tuple(RUNTIMES[self.target]))):
            if values is not None and not values:
                raise UsageError(f"{option} needs at least one of: {', '.join(choices)}")
            for value in values or ():
                check_choice(value, choices, option)
            check_distinct(option, values)
        if "openvino" in (self.runtimes or ()):  # asked for by name: a missing install is the one hint
            from tmdeploy.optional import require

            require("openvino", "openvino", "OpenVINO")
        if self.accuracy_limit is not None:
            check_option("--accuracy-limit", self.accuracy_limit, 1, 10**9)
        for option, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None:
                check_option(option, value, 0.0, math.inf)
        check_option("--window-s", self.window_s, 0.0, MAX_SECONDS)
        check_option("--profile-s", self.profile_s, 0.0, MAX_SECONDS)
        check_option("--stable-within", self.stable_within, 0.0, 1.0)
        check_option("--screen-slower", self.screen_slower, 1.0, 1e6)
        if self.threads is not None:
            check_option("--threads", self.threads, 1, MAX_THREADS)
        check_option("--seed", self.seed, 0, MAX_SEED)
        if self.data != "auto":
            from tmdeploy import data

            data.check_spec(self.data)
        if self.out is not None:
            check_output_dir(self.out, OUTPUT_FILES.values(), option="--out")
        if self.target == "cuda":
            _check_cuda()


def _check_cuda() -> None:
    """One line, before anything runs, where CUDA candidates cannot run: the CPU-only onnxruntime, no GPU."""
    import torch

    from tmdeploy import onnxfile

    onnxfile.providers("cuda")  # names the onnxruntime-gpu install step
    if not torch.cuda.is_available():  # CUDA-event timing and TensorRT's inputs are torch's
        raise TmdeployError("--target cuda: PyTorch sees no CUDA device on this machine")

