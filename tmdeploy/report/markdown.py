"""The Markdown report: what was measured where, one latency table per batch size, the accuracy table."""

from __future__ import annotations

from tmdeploy.bench import machine
from tmdeploy.sanitize import clean


def table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table: the first ``text_columns`` left-aligned, the numbers after them right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(row) + " |" for row in rows)]


def number(value) -> str:
    """Three significant digits without exponents: 0.412, 3.07, 41.2, 1,025."""
    if value is None or value != value:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _latency_rows(backends: list[dict], batch: int) -> list[list[str]]:
    rows = []
    for b in backends:
        stats = next((s for s in b["latency"] if s["batch"] == batch), None)
        if stats is None:
            continue
        speedup = stats.get("speedup")
        percentiles = [number(stats[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")]
        rows.append([b["label"], b["precision"], *percentiles, f"{stats['throughput']:,.0f}",
                     "–" if speedup is None else f"{speedup:.2f}×", str(stats["iterations"])])
    return rows


def _header(result: dict) -> list[str]:
    model, options = result["model"], result["options"]
    size = "×".join(map(str, model["input_size"]))
    lines = [f"# Benchmark: {model['arch']} ({size} input, {model['classes']} classes)", ""]
    if model["checkpoint"]:
        lines.append(f"- Checkpoint: `{model['checkpoint']}` (sha256 {model['sha256'][:12]})")
    lines += [
        f"- Machine: {machine.summary(result['machine'])}; device `{options['device']}`",
        f"- Timing: backends interleaved round by round, each at least {options['min_time']:g} s and "
        f"{options['min_iterations']} iterations per batch size after {options['warmup']} warm-up calls",
        "- Speed-up: median over rounds of PyTorch eager's round median divided by the backend's "
        "(measured in the same rounds); above 1 is faster. Images/s: batch size / mean latency.",
        "",
    ]
    return lines


# Ultralytics' benchmark marks: passed, built but failed (running, or below an accuracy floor), not built.
MARKS = {"passed": "✅ passed", "failed": "❎ failed", "not built": "❌ not built", "skipped": "– skipped"}


def percent(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def _summary_rows(backends: list[dict], batch: int) -> list[list[str]]:
    rows = []
    for b in backends:
        stats = next((s for s in b["latency"] if s["batch"] == batch), None)
        outcome = b.get("outcome") or ("passed" if b["status"] == "ok" else b["status"])  # bench.json before it
        rows.append([b["label"], b["precision"], MARKS.get(outcome, outcome), number(b.get("size_mb")),
                     number(b["setup_s"] if b.get("built", b["status"] == "ok") else None), percent(b["top1"]),
                     percent(b["agreement"]), number(stats["mean_ms"] / batch) if stats else "–",
                     f"{stats['throughput']:,.0f}" if stats else "–"])
    return rows


def to_markdown(result: dict) -> str:
    backends = result["backends"]
    lines = _header(result)
    batch = max(result["options"]["batches"])
    floors = [f"{name} ≥ {result['options'][key]:.2%}" for name, key in (("top-1", "min_top1"),
              ("agreement", "min_agreement")) if result["options"].get(key) is not None]
    lines += ["## Summary", ""]
    lines += table(["backend", "precision", "status", "size MB", "build s", "top-1", "agreement",
                    f"ms/image (batch {batch})", "images/s"], _summary_rows(backends, batch), text_columns=3)
    lines += ["", f"Floors: {', '.join(floors)}." if floors else "No accuracy floors were set.", ""]
    for batch in result["options"]["batches"]:
        rows = _latency_rows(backends, batch)
        if rows:
            lines += [f"## Latency, batch {batch}", ""]
            lines += table(["backend", "precision", "p50 ms", "p90 ms", "p99 ms", "mean ms", "images/s",
                            "speed-up vs eager", "iterations"], rows, text_columns=2)
            lines.append("")
    measured = [b for b in backends if b["top1"] is not None]
    if result.get("data") and measured:
        d = result["data"]
        lines += [f"## Accuracy on {d['spec']} ({d['split']} split, {d['samples']} images)", ""]
        lines += table(["backend", "precision", "top-1", f"agreement with {d.get('agreement_with', 'PyTorch eager')}"],
                       [[b["label"], b["precision"], f"{b['top1']:.2%}",
                         "–" if b["agreement"] is None else f"{b['agreement']:.2%}"] for b in measured],
                       text_columns=2)
        lines.append("")
    noted = [b for b in backends if b["status"] == "ok" and b["note"]]
    if noted:
        lines += ["## Where each runs", ""] + [f"- {b['label']}: {b['note']}" for b in noted] + [""]
    missing = [b for b in backends if b["status"] != "ok"]
    if missing:
        lines += ["## Not measured, or not everywhere", ""]
        lines += [f"- {b['label']} ({b['status']}): {b['note']}" for b in missing]
        lines.append("")
    below = [b for b in backends if b.get("below_floor")]
    if below:
        lines += ["## Below the accuracy floors", ""]
        lines += [f"- {b['label']}: {'; '.join(b['below_floor'])}" for b in below]
        lines.append("")
    return clean("\n".join(lines), newlines=True)  # names in it come from the checkpoint: terminal-safe
