"""Rich progress on stderr while a benchmark runs (stdout stays free for the result tables)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """One bar per stage: building the backends, each batch size's timing, the accuracy pass."""

    def __init__(self, enabled: bool = True) -> None:
        columns = [TextColumn("{task.description:<14}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
        self._progress = Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=False)
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "Reporter":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def _update(self, key: str, fraction: float, status: str) -> None:
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(key, total=1.0, status="")
        self._progress.update(self._tasks[key], completed=fraction, status=status)

    def setup(self, label: str, done: int, total: int) -> None:
        self._update("build", done / max(total, 1), label)

    def timing(self, batch: int, labels: list[str]):
        """The callback :func:`tmdeploy.bench.timing.measure` reports to, for one batch size."""
        key = f"batch {batch}"
        self._update(key, 0.0, ", ".join(labels))

        def report(label: str, fraction: float) -> None:
            self._update(key, fraction, label)

        return report

    def accuracy(self, label: str, done: int, total: int) -> None:
        self._update("accuracy", done / max(total, 1), label)
