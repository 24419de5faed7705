"""PNG plots of a bench result, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot
global state, safe in servers and tests)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter


def _figure(width: float, height: float, columns: int = 1):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns)


def _plain_log_ticks(axis, low: float, high: float) -> None:
    """Log-scale ticks as plain numbers (400, not 4×10²); minor ones labelled too when the axis spans less
    than a decade, since it may then have no major tick at all."""
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain if high < 10 * low else NullFormatter())


def latency_plot(result: dict) -> Figure | None:
    """Median latency (bars to p90 and p99) and throughput against batch size, one line per backend."""
    measured = [b for b in result["backends"] if b["latency"]]
    if not measured:
        return None
    batches = result["options"]["batches"]
    figure, (lat_ax, thr_ax) = _figure(11, 5.2, columns=2)
    for i, b in enumerate(measured):
        stats = sorted(b["latency"], key=lambda s: s["batch"])
        xs = [s["batch"] for s in stats]
        p50 = [s["p50_ms"] for s in stats]
        style = {"marker": "os^vD<>ph*"[i % 10], "linestyle": "-" if b["precision"] == "fp32" else "--",
                 "label": b["label"], "color": f"C{i % 10}"}
        lat_ax.errorbar(xs, p50, yerr=[[0] * len(stats), [s["p99_ms"] - s["p50_ms"] for s in stats]],
                        capsize=3, **style)
        thr_ax.plot(xs, [s["throughput"] for s in stats], **style)
    device = result["options"]["device"]
    lat_ax.set(title=f"Latency on {device} (p50, bar to p99)", ylabel="milliseconds per batch")
    thr_ax.set(title=f"Throughput on {device}", ylabel="images per second")
    for ax in (lat_ax, thr_ax):
        ax.set(xlabel="batch size", xscale="log", yscale="log")
        ax.set_xticks(batches)
        _plain_log_ticks(ax.xaxis, min(batches), max(batches))
        _plain_log_ticks(ax.yaxis, *ax.get_ylim())
        ax.grid(True, which="both", alpha=0.3)
    figure.legend(*lat_ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(len(measured), 4),
                  fontsize=8)
    figure.suptitle(f"{result['model']['arch']} — {result['machine'].get('gpu') or result['machine']['cpu']}",
                    fontsize=10)
    return figure


def accuracy_plot(result: dict) -> Figure | None:
    """Top-1 and agreement with PyTorch per backend, as labelled horizontal bars."""
    measured = [b for b in result["backends"] if b["top1"] is not None]
    if not measured:
        return None
    figure, ax = _figure(8, 0.5 * len(measured) + 1.9)
    rows = range(len(measured))
    height = 0.38
    top1 = ax.barh([r - height / 2 for r in rows], [b["top1"] for b in measured], height, label="top-1", color="C0")
    agree = ax.barh([r + height / 2 for r in rows], [b["agreement"] or 0 for b in measured], height,
                    label="agreement with PyTorch", color="C1")
    for bars, key in ((top1, "top1"), (agree, "agreement")):
        ax.bar_label(bars, labels=["–" if b[key] is None else f"{b[key]:.1%}" for b in measured], padding=3,
                     fontsize=8)
    ax.set_yticks(list(rows), [f"{b['label']} ({b['precision']})" for b in measured], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("fraction of test images")
    data = result.get("data") or {}
    ax.set_title(f"{result['model']['arch']}: accuracy on {data.get('spec', '?')} ({data.get('samples', '?')} images)",
                 fontsize=10)
    figure.legend(loc="outside lower center", ncol=2, fontsize=8)
    return figure
