"""Side-by-side timing: interleaved rounds under a time budget, per-iteration samples, paired ratios.

On a shared machine the load changes while a benchmark runs, so backends are never timed one after the
other: every round gives each backend one chunk of iterations (rotating who goes first), and a ratio
between two backends is the median over rounds of the ratio of their per-round medians. A slow minute
then slows both sides of a ratio alike. Each chunk starts with one untimed call, so thread pools still
spinning from the previous backend (onnxruntime's, PyTorch's) and cold caches do not land in the samples.

With many backends a round is long, and the load can change between the baseline's chunk and another
backend's. ``measure(anchor=...)`` then times the baseline beside every other backend (one chunk just before
it, or just after on alternate rounds) and each ratio to it pairs the chunks timed side by side.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tmdeploy.errors import first_line

# the status words of every record: bench.json's backends, optimize's status.json candidates and their steps
OK, FAILED, SKIPPED = "ok", "failed", "skipped"

Call = Callable[[], object]
Timer = Callable[[Call], float]  # runs the call once, returns its latency in seconds


def wall_timer(call: Call) -> float:
    """Host wall time: right for the CPU, and for device calls that return only when their work is done."""
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) * 1e-9


@dataclass
class Samples:
    """Every timed iteration of one backend, and the median of each round it took part in."""

    times: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    # with an anchor (measure's): the anchor's chunk median timed right beside each of this backend's rounds
    anchor_medians: list[float] = field(default_factory=list)
    is_anchor: bool = False
    first_call: float = 0.0  # the first call of all (graph compilation, allocation): reported, never sampled
    error: str | None = None

    @property
    def busy(self) -> float:
        return sum(self.times)


@dataclass(frozen=True)
class Budget:
    min_time: float = 1.0  # seconds of timed iterations per backend
    min_iterations: int = 10
    min_rounds: int = 5  # enough rounds for a median of per-round ratios
    warmup: int = 3
    chunk_time: float = 0.1  # target seconds per backend per round

    def done(self, samples: Samples, rounds: int) -> bool:
        return rounds >= self.min_rounds and samples.busy >= self.min_time and len(samples.times) >= self.min_iterations


def _warm_up(call: Call, timer: Timer, budget: Budget, samples: Samples) -> int:
    """Run the warm-up; return the chunk size that makes one chunk last about ``budget.chunk_time``."""
    samples.first_call = timer(call)
    times = [timer(call) for _ in range(budget.warmup)] or [samples.first_call]
    per_call = max(statistics.median(times), 1e-7)
    return int(min(max(budget.chunk_time / per_call, 1), 10_000))


def error_line(err: BaseException) -> str:
    """An exception as one report line: its type and the first line of its message."""
    line = first_line(err)
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def measure(calls: dict[str, Call], budget: Budget = Budget(), timer: Timer = wall_timer,
            progress: Callable[[str, float], None] | None = None, deadline: float | None = None,
            anchor: str | None = None) -> dict[str, Samples]:
    """Time every call side by side until each has its budget; a call that raises is recorded, not raised.

    ``progress(label, fraction_done)`` is told which call runs and how far the slowest one is. ``deadline``
    (a ``time.perf_counter()`` value) ends the rounds early, once every call has had one: on a loaded
    machine a budget counted in timed seconds per call can take many times longer in wall time. ``anchor``
    (one of ``calls``): the baseline, timed beside every other call in each round (:func:`paired_ratio`).
    """
    samples = {label: Samples(is_anchor=label == anchor) for label in calls}
    chunks: dict[str, int] = {}
    for label, call in calls.items():
        if progress:
            progress(f"{label}: warm-up", 0.0)
        try:
            chunks[label] = _warm_up(call, timer, budget, samples[label])
        except Exception as err:  # noqa: BLE001 - a backend that cannot run is a result, not a crash
            samples[label].error = error_line(err)
    live = [label for label in calls if samples[label].error is None]
    rounds = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one backend's chunk would be charged to that backend
    try:
        while live and not all(budget.done(samples[label], rounds) for label in live) and not (
                rounds and deadline is not None and time.perf_counter() >= deadline):
            order = live[rounds % len(live):] + live[:rounds % len(live)]
            paired = anchor in live and len(live) > 1
            for label in order:
                if progress:
                    progress(label, _fraction_done(samples, live, rounds, budget))
                if paired and label == anchor:
                    continue  # it runs beside every other call instead
                beside = None
                if paired and rounds % 2 == 0:
                    beside = _chunk(calls, anchor, chunks, timer, samples)
                median = _chunk(calls, label, chunks, timer, samples)
                if paired and rounds % 2 == 1:
                    beside = _chunk(calls, anchor, chunks, timer, samples)
                if median is not None and beside is not None:
                    samples[label].anchor_medians.append(beside)
            live = [label for label in live if samples[label].error is None]
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def _chunk(calls: dict[str, Call], label: str, chunks: dict[str, int], timer: Timer,
           samples: dict[str, Samples]) -> float | None:
    """One untimed call, then one timed chunk of ``label``'s iterations; its median, None if it raised."""
    try:
        calls[label]()
        times = [timer(calls[label]) for _ in range(chunks[label])]
    except Exception as err:  # noqa: BLE001
        samples[label].error = error_line(err)
        return None
    samples[label].times += times
    samples[label].round_medians.append(statistics.median(times))
    return samples[label].round_medians[-1]


def _fraction_done(samples: dict[str, Samples], live: list[str], rounds: int, budget: Budget) -> float:
    def fraction(s: Samples) -> float:
        parts = [rounds / budget.min_rounds, len(s.times) / budget.min_iterations]
        if budget.min_time > 0:
            parts.append(s.busy / budget.min_time)
        return min(parts)

    return min(1.0, min(fraction(samples[label]) for label in live))


def latency_stats(times: list[float], batch: int) -> dict:
    """Percentiles and mean in milliseconds; throughput from the mean, since that is what a stream sustains."""
    ms = np.asarray(times, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {"iterations": int(ms.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": mean, "throughput": batch / (mean * 1e-3)}


def paired_ratio(baseline: Samples, other: Samples) -> float:
    """How many times faster ``other`` is than ``baseline``: median over rounds of baseline/other.

    Both ran in the same rounds (interleaved), so each per-round ratio compares them under the same load; with
    ``baseline`` measure's anchor, each of ``other``'s chunks is paired with the anchor's chunk beside it.
    """
    base = other.anchor_medians if baseline.is_anchor and other.anchor_medians else baseline.round_medians
    pairs = [b / o for b, o in zip(base, other.round_medians) if o > 0]
    return float(statistics.median(pairs)) if pairs else float("nan")
