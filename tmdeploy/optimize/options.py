"""What ``tmdeploy optimize`` can be asked, its defaults and their validation, importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from tmdeploy.errors import TmdeployError, UsageError, check_choice
from tmdeploy.export.options import DEFAULT_FORM, EXPORTERS, FORMS, PRECISIONS
from tmdeploy.fileio import check_output_dir
from tmdeploy.runtimes import DEVICES, RUNTIMES, by_label, get, require, where
from tmdeploy.values import MAX_SECONDS, MAX_SEED, MAX_THREADS, check_batches, check_distinct, check_option

# what optimize writes into --out, named once: checked before the run, then written
OUTPUT_FILES = {"model": "model.onnx", "status": "status.json", "report": "report.md", "latency": "latency.png"}
TARGETS = DEVICES  # where the model will run: each has its runtimes (tmdeploy.runtimes)
STRATEGIES = ("min-latency", "max-throughput", "max-throughput-under-latency")


WINDOW_S, QUICK_WINDOW_S = 0.5, 0.2
PROFILE_S, QUICK_PROFILE_S = 90.0, 10.0
QUICK_ACCURACY_LIMIT = 256


@dataclass(frozen=True)
class OptimizeOptions:
    device: str = "cpu"  # where the model will run (--device, as bench and check say)
    target: str | None = None  # deprecated, for one release: the old name of device (--target)
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
    # what runs the files (tmdeploy.runtimes); None: every runtime of the target whose probe passes (on the
    # CPU, onnxruntime and the optional ones installed; on CUDA, onnxruntime's TensorRT provider where this
    # onnxruntime has it, tmdeploy's TensorRT engine always, listed SKIPPED where TensorRT is missing)
    runtimes: tuple[str, ...] | None = None
    # accuracy on its test split, calibration on its train split; "auto": the data the checkpoint was trained on
    data: str = "auto"
    accuracy_limit: int | None = None  # at most this many held-out images; None: all (--quick: 256)
    atol: float | None = None  # parity tolerances; None: the precision's defaults (tmdeploy.verify.stats)
    rtol: float | None = None
    # seconds of timed iterations per candidate in one timing window; None: WINDOW_S (--quick: QUICK_WINDOW_S)
    window_s: float | None = None
    # time budget for timing windows, all batch sizes together; None: PROFILE_S (--quick: QUICK_PROFILE_S)
    profile_s: float | None = None
    stable_within: float = 0.03  # two windows agree: the same fastest (ties within this), its speed-up moved less
    # after the first window, candidates this many times slower than the fastest are not timed again
    screen_slower: float = 1.25
    threads: int | None = None  # onnxruntime intra-op threads; None: its default
    seed: int = 0
    quick: bool = False
    out: Path | None = None  # the output folder; None: <checkpoint stem>-optimized beside the checkpoint
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.target is not None:  # the deprecated name: checked under its own flag, then it is the device
            check_choice(self.target, TARGETS, "--target")
            if self.device not in ("cpu", self.target):
                raise UsageError(f"--target {self.target} and --device {self.device}: give --device only")
            object.__setattr__(self, "device", self.target)
            object.__setattr__(self, "target", None)

    def effective(self) -> "OptimizeOptions":
        """The options with what was left unset (None) filled: --quick's values where it is given, else the
        defaults; an explicit value wins either way."""
        quick = self.quick
        return replace(self, forms=self.forms if self.forms is not None or not quick else (DEFAULT_FORM,),
                       accuracy_limit=self.accuracy_limit or (QUICK_ACCURACY_LIMIT if quick else None),
                       window_s=self.window_s if self.window_s is not None else QUICK_WINDOW_S if quick else WINDOW_S,
                       profile_s=(self.profile_s if self.profile_s is not None
                                  else QUICK_PROFILE_S if quick else PROFILE_S))

    def validate(self) -> None:
        check_choice(self.device, TARGETS, "--device")
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
        for name in self.runtimes or ():  # another device's runtime: the choices, and where it runs
            if get(name, self.device) is None and where(name):
                raise UsageError(f"unknown --runtimes '{name}'; choose one of: {', '.join(RUNTIMES[self.device])} "
                                 f"({by_label(name)} is a {' and '.join(d.upper() for d in where(name))} runtime, "
                                 f"not a --device {self.device} candidate)")
        for option, values, choices in (("--forms", self.forms, FORMS), ("--precisions", self.precisions, PRECISIONS),
                                        ("--int8-recipes", self.int8_recipes,
                                         () if self.int8_recipes is None else int8_recipe_names()),
                                        ("--exporters", self.exporters, EXPORTERS),
                                        ("--runtimes", self.runtimes, tuple(RUNTIMES[self.device]))):
            if values is not None and not values:
                raise UsageError(f"{option} needs at least one of: {', '.join(choices)}")
            for value in values or ():
                check_choice(value, choices, option)
            check_distinct(option, values)
        for name in self.runtimes or ():  # asked for by name: a missing install is the one hint
            if RUNTIMES[self.device][name].missing == "drop":  # (the others are listed SKIPPED with it)
                require(RUNTIMES[self.device][name])
        if self.accuracy_limit is not None:
            check_option("--accuracy-limit", self.accuracy_limit, 1, 10**9)
        for option, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None:
                check_option(option, value, 0.0, math.inf)
        for option, value in (("--window-s", self.window_s), ("--profile-s", self.profile_s)):
            if value is not None:
                check_option(option, value, 0.0, MAX_SECONDS)
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
        if self.device == "cuda":
            _check_cuda()


def int8_recipe_names() -> tuple[str, ...]:
    """The names of tmdeploy.export.int8_recipes.INT8_RECIPES, the one table (imported on use: onnx is slow to load)."""
    from tmdeploy.export.int8_recipes import INT8_RECIPES

    return tuple(INT8_RECIPES)


def _check_cuda() -> None:
    """One line, before anything runs, where CUDA candidates cannot run: the CPU-only onnxruntime, no GPU."""
    import torch

    from tmdeploy import onnxfile

    onnxfile.providers("cuda")  # names the onnxruntime-gpu install step
    if not torch.cuda.is_available():  # CUDA-event timing and TensorRT's inputs are torch's
        raise TmdeployError("--device cuda: PyTorch sees no CUDA device on this machine")

