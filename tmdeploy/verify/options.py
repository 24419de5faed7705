"""What ``tmdeploy check`` can be asked, its defaults and their validation, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tmdeploy.errors import UsageError


@dataclass
class CheckOptions:
    batches: tuple[int, ...] = (1, 7)
    iterations: int = 2  # per batch size
    data: str | None = None  # None: seeded random inputs; else a data spec (see tmdeploy.data)
    seed: int = 0
    atol: float | None = None  # None: the default for the file's precision
    rtol: float | None = None
    min_top1: float | None = None
    save_inputs: Path | None = None
    save_outputs: Path | None = None
    localize: bool = False

    def validate(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise UsageError(f"--batch needs positive batch sizes, got {','.join(map(str, self.batches))}")
        if self.iterations < 1:
            raise UsageError(f"--iterations must be at least 1, got {self.iterations}")
