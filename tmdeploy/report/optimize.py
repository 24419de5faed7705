"""The optimize report: ``status.json`` as ``report.md`` and a PNG.

Rendered from the file's contents alone (a dict as written or loaded, read as the typed
:class:`tmdeploy.optimize.status.Status`), so a report can be rewritten from an old status.json without
re-running.
"""

from __future__ import annotations

from pathlib import Path

from tmdeploy.bench import machine
from tmdeploy.fileio import atomic_write
from tmdeploy.optimize.options import OUTPUT_FILES
from tmdeploy.optimize.status import CandidateRecord, Status
from tmdeploy.report.markdown import MARKS, number, percent, table
from tmdeploy.report.plots import _figure
from tmdeploy.runtimes import by_label
from tmdeploy.sanitize import clean

# status.json's words (upper case in files written before they were bench's): the bench table's marks
_MARK = {"ok": MARKS["passed"], "failed": MARKS["failed"], "skipped": MARKS["skipped"]}


def _errors(cand: CandidateRecord) -> list[str]:
    e, tol = cand.errors, cand.tolerance
    if not e:
        return ["–", "–"]
    bound = f"atol {number(tol['atol'])}, rtol {number(tol['rtol'])}" if tol and tol["elementwise"] else "top-1 only"
    return [f"{number(e['max_abs_error'])} / {number(e['p99_abs_error'])}", bound]


def _runs_on(decision: dict) -> str:
    """How the choice must be run to be as fast as measured (older status files name no provider)."""
    if decision.get("engine"):
        return f", with its TensorRT engine `{decision['engine']}`."
    if decision.get("provider") and decision["provider"] != "CPUExecutionProvider":
        # the whole providers list where the status file has it (a fallback provider has settings too)
        providers = decision.get("onnxruntime_providers") or [[decision["provider"], decision.get("provider_options")]]
        runs = [name + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
                for name, options in providers if name != "CPUExecutionProvider"]
        return f", to be run by onnxruntime with {' then '.join(runs)}."
    if decision.get("runtime", "onnxruntime") != "onnxruntime":  # a runtime that reads the file itself
        return f", to be run by {by_label(decision['runtime'])}."
    return "."


def _speedup(stats: dict | None) -> str:
    if not stats or not stats.get("speedup_vs_default"):
        return "–"
    return f"{stats['speedup_vs_default']:.2f}×" + ("†" if stats.get("first_window_only") else "")


def to_markdown(status: dict | Status) -> str:
    status = status if isinstance(status, Status) else Status.from_dict(status)
    model, options, decision, env = status.model, status.options, status.decision, status.environment
    batches = options["batches"]
    size = "×".join(map(str, model["input_size"]))
    data = status.data
    lines = [f"# Optimize: {model['arch']} ({size} input, {model['classes']} classes)", "",
             f"- Machine: {machine.summary(env)}; CPU flags: {', '.join(env['cpu_flags']) or 'none known'}",
             f"- INT8 recipes tried: {', '.join(options['int8_recipes'])} "
             f"(this {'GPU' if env.get('gpu') else 'CPU'}'s picks: "
             f"{', '.join(env['int8_recipes_for_this_cpu']['recipes'])} — {env['int8_recipes_for_this_cpu']['why']})",
             f"- Accuracy on {data['spec']} ({data['split']} split, {data['samples']} images): at most "
             f"{options['max_top1_drop']:g} points of top-1 below PyTorch FP32, "
             f"agreement ≥ {options['min_agreement']:.2%}"
             + (f", top-1 ≥ {options['min_top1']:.2%}" if options.get("min_top1") is not None else ""),
             f"- Strategy: {options['strategy']}"
             + (f" {options['latency_ms']:g} ms" if options.get("latency_ms") else ""),
             ""]
    if decision:
        speedup = decision.get("speedup_vs_default")
        lines += [f"**Choice: `{decision['chosen']}`** at batch {decision['batch']}: "
                  f"p50 {number(decision['p50_ms'])} ms, {decision['throughput']:,.0f} images/s"
                  + (f", {speedup:.2f}× the default FP32 export" if speedup else "")
                  + ". Written as `model.onnx`" + _runs_on(decision), ""]
    else:
        lines += ["**No candidate passed**: no model.onnx was written (exit status 1).", ""]
    header = ["candidate", "precision", "status", "size MB", "build s", "max / p99 abs error", "tolerance", "top-1",
              "agreement", "top-1 drop (points)", *(f"p50 ms b{b}" for b in batches), f"images/s b{max(batches)}",
              *(f"speed-up b{b}" for b in batches)]
    rows = []
    for c in status.candidates:
        acc = c.accuracy or {}
        big = c.stat(max(batches))
        rows.append([f"`{c.name}`" + (" (default)" if c.default_export else ""), c.precision,
                     _MARK[c.status.lower()], number(c.size_mb), number(c.build_s), *_errors(c),
                     percent(acc.get("top1")), percent(acc.get("agreement")), number(acc.get("top1_drop_points")),
                     *(number((c.stat(b) or {}).get("p50_ms")) for b in batches),
                     f"{big['throughput']:,.0f}" if big else "–", *(_speedup(c.stat(b)) for b in batches)])
    lines += ["## Candidates", ""] + table(header, rows, text_columns=3) + [""]
    if any(s.get("first_window_only") for c in status.candidates for s in c.latency):
        lines += ["†: screened out after the first timing window; its numbers and speed-up come from that window "
                  "(paired with the default export's rounds there), the others' from the last two.", ""]
    failed = [c for c in status.candidates if not c.passed]
    if failed:
        lines += ["## Not chosen because", ""] + [f"- `{c.name}` ({c.status}): {c.reason}" for c in failed]
        lines.append("")
    lines += ["## Timing", "", "Candidates timed side by side in interleaved rounds (as `tmdeploy bench`), in windows "
              f"of at least {options['window_s']:g} s each, until two windows in a row agreed (the same fastest "
              f"candidate or one within {options['stable_within']:.0%} of it, its speed-up within "
              f"{options['stable_within']:.0%}) or {options['profile_s']:g} s were "
              "spent; the numbers pool the last two windows. The default export runs beside every candidate in "
              "each round, and a speed-up is the median of those side-by-side ratios; the choice ranks by it "
              "(a p50 moves with the load of the minute it was timed in).", ""]
    lines += [f"- batch {p['batch']}: {p['windows']} windows, {p['ended_by']}"
              + (f" (last change {p['last_change']:.1%} in {p['compared']})" if p["last_change"] is not None
                 else " (the last two windows had different leaders)" if p["windows"] > 1 else "")
              + (f"; timed in the first window only, more than {p['screen_slower']:g}× slower than the fastest: "
                 f"{', '.join(p['screened_out'])}" if p.get("screened_out") else "")
              for p in status.profile]
    lines += ["", "## Reproduce a parity check without tmdeploy", "",
              "In this folder (inputs and PyTorch's outputs saved in polygraphy's JSON formats):", ""]
    lines += [f"- `{c.name}`: `{c.reproduce['command']}`" for c in status.candidates if c.reproduce]
    for runtime in dict.fromkeys(c.runtime for c in status.candidates if "why_not_polygraphy" in (c.reproduce or {})):
        lines += ["", f"The {by_label(runtime)} candidates' lines are `tmdeploy check --runtime {runtime}`: polygraphy "
                      f"has no {by_label(runtime)} runner."]
    lines.append("")
    return clean("\n".join(lines), newlines=True)


def latency_figure(status: dict | Status):
    """p50 latency at the largest batch per timed candidate; the choice and the default marked."""
    status = status if isinstance(status, Status) else Status.from_dict(status)
    batch = max(status.options["batches"])
    timed = [(c, c.stat(batch)) for c in status.candidates if c.stat(batch)]
    if not timed:
        return None
    chosen = (status.decision or {}).get("chosen")
    figure, ax = _figure(8, 0.45 * len(timed) + 1.6)
    colors = ["C2" if c.name == chosen else "C7" if c.default_export else "C0" for c, _ in timed]
    bars = ax.barh(range(len(timed)), [s["p50_ms"] for _, s in timed], color=colors)
    ax.bar_label(bars, labels=[f"{s['p50_ms']:.3g} ms" for _, s in timed], padding=3, fontsize=8)
    ax.set_yticks(range(len(timed)), [c.name for c, _ in timed], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"p50 latency at batch {batch}, ms (green: the choice, grey: the default export)")
    env = status.environment
    ax.set_title(f"{status.model['arch']} on {env.get('gpu') or env['cpu']}", fontsize=10)
    return figure


def write_optimize_report(status: dict | Status, directory) -> dict[str, Path]:
    """Write ``report.md`` and ``latency.png`` (when anything was timed) into ``directory``."""
    directory = Path(directory)
    status = status if isinstance(status, Status) else Status.from_dict(status)
    paths = {"markdown": directory / OUTPUT_FILES["report"]}
    atomic_write(paths["markdown"], lambda tmp: tmp.write_text(to_markdown(status)))
    figure = latency_figure(status)
    if figure is not None:
        paths["latency"] = directory / OUTPUT_FILES["latency"]
        atomic_write(paths["latency"], lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    return paths
