"""Report stage: a bench result as files a person reads — ``bench.json``, ``bench.md`` and PNG plots — and an
optimize run's ``status.json`` as ``report.md`` and a plot (:mod:`.optimize`).

Everything here works on the result's plain dict (``BenchResult.to_dict()`` or a loaded ``bench.json``),
so a report can be rewritten from an old run without re-running it.
"""

from __future__ import annotations

from pathlib import Path

from tmdeploy.fileio import atomic_write, json_text
from tmdeploy.report.markdown import to_markdown
from tmdeploy.report.optimize import write_optimize_report
from tmdeploy.report.plots import accuracy_plot, latency_plot

__all__ = ["to_markdown", "write_optimize_report", "write_report"]


def _as_dict(result) -> dict:
    return result if isinstance(result, dict) else result.to_dict()


# a bench report's files by kind: known before the benchmark runs, so the CLI can refuse a bad target first
FILES = {"json": "bench.json", "markdown": "bench.md", "latency": "latency.png", "accuracy": "accuracy.png"}


def write_report(result, directory) -> dict[str, Path]:
    """Write every report file into ``directory``; returns them by kind. Plots without data are left out."""
    result = _as_dict(result)
    directory = Path(directory)
    paths = {kind: directory / FILES[kind] for kind in ("json", "markdown")}
    atomic_write(paths["json"], lambda tmp: tmp.write_text(json_text(result)))
    atomic_write(paths["markdown"], lambda tmp: tmp.write_text(to_markdown(result)))
    for kind, plot in (("latency", latency_plot), ("accuracy", accuracy_plot)):
        figure = plot(result)
        if figure is not None:
            paths[kind] = directory / FILES[kind]
            atomic_write(paths[kind], lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=120))
    return paths
