"""A bench result as files: ``bench.json``, ``bench.md`` and the PNG plots."""

from __future__ import annotations

from pathlib import Path

from tmdeploy.fileio import atomic_write, json_text
from tmdeploy.report.markdown import to_markdown
from tmdeploy.report.plots import accuracy_plot, latency_plot


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
