"""The profile step: the correct candidates timed side by side, in windows until two agree.

Interleaved as ``tmdeploy bench`` times backends (:func:`tmdeploy.bench.timing.measure`), with the default
export beside every candidate in each round, so each speed-up pairs chunks timed seconds apart; on CUDA with
CUDA events. The first window screens out the far slower candidates; the later ones settle the ranking.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from tmdeploy.bench.timing import FAILED, OK, SKIPPED, Budget, Samples, latency_stats, measure, paired_ratio, wall_timer
from tmdeploy.optimize.candidates import Candidate
from tmdeploy.optimize.options import OptimizeOptions
from tmdeploy.optimize.run import Run


def profile(run: Run, todo: list[Candidate]) -> list[dict]:
    """Time the correct candidates (and the default export, the unit of the speed-ups) side by side, per
    batch size, in windows until two in a row agree within ``stable_within`` or the budget ends."""
    options, built = run.options, run.sessions
    timed = [c for c in todo if c.correct()]
    if timed:  # the default export is the unit of the speed-ups even when it is not correct itself
        timed = [c for c in todo if c in timed or (c.is_default and c.step("build").status == OK)]
    for cand in todo:
        if cand not in timed:
            cand.mark("profile", SKIPPED, "not correct: not timed")
    for cand in timed:  # the run keeps each session it opens
        try:
            run.session(cand)
        except Exception as err:  # noqa: BLE001
            cand.mark("profile", FAILED, error_line(err))
    records = []
    per_batch = options.profile_s / len(options.batches)
    for batch in options.batches:
        x = np.random.default_rng(options.seed).standard_normal((batch, *run.ckpt.card.input_size)).astype(np.float32)
        calls = {}
        for cand in timed:
            if cand.name in built and cand.step("profile").status != FAILED:
                try:
                    calls[cand.name] = built[cand.name].bind(x)
                except Exception as err:  # noqa: BLE001 - an engine without this batch size, say
                    cand.mark("profile", FAILED, f"batch {batch}: {error_line(err)}")
        live = [c for c in timed if c.name in calls]
        records.append(_stable_windows(calls, batch, per_batch, options, live, run.table))
    for cand in timed:
        if cand.step("profile").status != FAILED:
            cand.mark("profile", OK, "", 0.0)
    return records


def _stable_windows(calls: dict, batch: int, budget_s: float, options: OptimizeOptions, live: list[Candidate],
                    table) -> dict:
    budget = Budget(min_time=options.window_s, min_iterations=5, min_rounds=3, warmup=2)
    # the first window screens every candidate, each beside the default export: short chunks and a quarter of
    # the time tell who is far behind (with 28 candidates a full window took the whole budget); the windows
    # that settle the ranking are spent on the contenders
    screening = Budget(min_time=options.window_s / 4, min_iterations=3, min_rounds=3, warmup=2, chunk_time=0.03)
    timer = wall_timer
    if options.device == "cuda":  # GPU time, as `bench --device cuda` measures it
        from tmdeploy.bench.cuda import event_timer as timer
    start = time.perf_counter()
    windows: list[dict[str, Samples]] = []
    change = None
    default = next((c.name for c in live if c.is_default), None)
    screened: dict[str, Samples] = {}  # left out of later windows: their first window is their record
    while calls:
        table.status(f"timing batch {batch}: window {len(windows) + 1}, {len(calls)} candidates")
        # the default export, the unit of every speed-up, timed beside each candidate: with dozens of candidates
        # a round is long, and a 2-core VM's speed drifts within one
        windows.append(measure(calls, budget if windows else screening, timer, deadline=start + budget_s,
                               anchor=default))
        for name, s in windows[-1].items():
            if s.error:
                next(c for c in live if c.name == name).mark("profile", FAILED, f"batch {batch}: {s.error}")
                calls.pop(name)
        if len(windows) == 1 and calls:
            for name in screen(windows[0], calls, default, options.screen_slower):
                screened[name] = windows[0][name]
                calls.pop(name)
        if len(windows) >= 2:
            # agreement on what the choice rests on: the latest leader led the window before too (or tied with
            # its leader within stable_within), and its speed moved less than stable_within
            before, last = (_speeds(w, calls, default) for w in windows[-2:])
            leader = max(last, key=last.get)
            tied = before[leader] >= (1 - options.stable_within) * max(before.values())
            change = abs(last[leader] / before[leader] - 1) if tied else None
            if change is not None and change <= options.stable_within:
                break
        if time.perf_counter() - start >= budget_s:
            break
    stable = change is not None and change <= options.stable_within
    pooled = {n: _pool([w[n] for w in windows[-2:]]) for n in calls}
    pooled.update(screened)
    default = default if default in pooled else None
    for cand in live:
        if cand.name not in pooled:
            continue
        s = pooled[cand.name]
        stats = {"batch": batch, **latency_stats(s.times, batch)}
        unit = windows[0][default] if cand.name in screened and default else pooled.get(default)
        stats["speedup_vs_default"] = paired_ratio(unit, s) if default else None  # rounds of the same windows
        stats["first_window_only"] = cand.name in screened
        cand.latency.append(stats)
        table.update(cand)
    return {"batch": batch, "windows": len(windows), "stable": stable, "last_change": change,
            "screened_out": sorted(screened), "screen_slower": options.screen_slower,
            "compared": ("the fastest candidate's speed-up over the default export" if default
                         else "the fastest candidate's median latency"),
            "stable_within": options.stable_within, "seconds": time.perf_counter() - start,
            "ended_by": "two windows agreed" if stable else "time budget"}


def screen(window: dict[str, Samples], calls: dict, default: str | None, slower: float) -> list[str]:
    """Candidates more than ``slower`` times slower than the fastest in the first window: the windows that
    follow, which settle the ranking, are spent on the contenders (the default export stays, as the unit)."""
    medians = {n: statistics.median(window[n].times) for n in calls}
    best = min(medians.values())
    return [n for n, m in medians.items() if m > slower * best and n != default]


def _speeds(window: dict[str, Samples], calls: dict, default: str | None) -> dict[str, float]:
    """What two windows must agree on: each candidate's paired speed-up over the default export (a slow
    minute on a shared machine moves both sides alike), or 1 / its median latency when that was not timed."""
    if default in calls:
        return {n: paired_ratio(window[default], window[n]) for n in calls}
    return {n: 1.0 / statistics.median(window[n].times) for n in calls}


def _pool(samples: list[Samples]) -> Samples:
    return Samples(times=[t for s in samples for t in s.times],
                   round_medians=[m for s in samples for m in s.round_medians],
                   anchor_medians=[m for s in samples for m in s.anchor_medians],
                   is_anchor=any(s.is_anchor for s in samples))
