"""A live table of the candidates on stderr while optimize runs (rich), so a long run shows where it is."""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tmdeploy.optimize.candidates import FAILED, OK, SKIPPED, STEPS, Candidate

_STYLE = {OK: "green", FAILED: "red", SKIPPED: "dim"}


class LiveTable:
    def __init__(self, todo: list[Candidate], enabled: bool = True) -> None:
        self.todo = todo
        self.running: dict[str, str] = {}  # candidate → the step it is in
        self.line = ""
        self._live = Live(console=Console(stderr=True), auto_refresh=False, transient=False) if enabled else None

    def __enter__(self) -> "LiveTable":
        if self._live:
            self._live.__enter__()
            self._refresh()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self.running.clear()
            self.line = ""
            self._refresh()
            self._live.__exit__(*exc)

    def update(self, cand: Candidate, step: str | None = None) -> None:
        """``cand`` is now in ``step`` (None: between steps)."""
        if step:
            self.running[cand.name] = step
        else:
            self.running.pop(cand.name, None)
        self._refresh()

    def status(self, line: str) -> None:
        self.line = line
        self._refresh()

    def _refresh(self) -> None:
        if not self._live:
            return
        table = Table(title="tmdeploy optimize", title_justify="left")
        table.add_column("candidate", no_wrap=True)
        for column in (*STEPS, "p50 ms", "img/s"):
            table.add_column(column, no_wrap=True)
        for cand in self.todo:
            cells = []
            for step in cand.steps:
                if self.running.get(cand.name) == step.step:
                    cells.append(Text("…", style="yellow"))
                else:
                    shown = step.status if step.status != SKIPPED or step.reason != "not reached" else ""
                    cells.append(Text(shown, style=_STYLE.get(step.status, "")))
            p50 = ", ".join(f"{s['p50_ms']:.3g}" for s in cand.latency)
            throughput = f"{cand.latency[-1]['throughput']:,.0f}" if cand.latency else ""
            table.add_row(cand.name, *cells, p50, throughput)
        self._live.update(Group(table, Text(self.line, style="dim")), refresh=True)
