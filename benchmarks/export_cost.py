"""Benchmark 4: wall time and peak memory of `tmdeploy export`, the real CLI in a subprocess.

Each export is a fresh ``python -m tmdeploy export`` process; its peak resident memory is the kernel's
``ru_maxrss`` for that one child (``os.wait4``). Models and repetitions are interleaved (every round
exports each model once) and medians are reported. A process that only imports the export stage is
measured alongside, so the table shows what exporting itself adds to the import cost. Ratios are to rn26.

Untrained seeded checkpoints, 3×32×32 input (export cost does not depend on the weights' values).

    PYTHONPATH=. python benchmarks/export_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import caption, print_table, untrained

from tmdeploy import checkpoint, models

ARCHS = ("rn26", "rn26-tm", "rn26-cls", "dn100")
IMPORT_ONLY = "import only"
ROOT = Path(__file__).resolve().parent.parent


def run_child(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process; raise if it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.read().decode()[-500:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def commands(workdir: Path) -> dict[str, list[str]]:
    out = {IMPORT_ONLY: ["-c", "import tmdeploy.cli.export_cmd, tmdeploy.export.to_onnx"]}
    for arch in ARCHS:
        ckpt = untrained(arch)
        path = workdir / f"{arch}.pt"
        checkpoint.save(path, ckpt.build_model(), ckpt.card)
        out[arch] = ["-m", "tmdeploy", "export", str(path), "--out", str(workdir / f"{arch}.onnx")]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="exports per model, interleaved (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tmdeploy-export-cost-") as tmp:
        cmds = commands(Path(tmp))
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        for _ in range(args.repeats):
            for name, argv in cmds.items():
                runs[name].append(run_child(argv))
    def median(name: str, index: int, per: str | None = None) -> float:
        """Median of one measure, or of its per-round ratio to ``per`` (the same round's run)."""
        return statistics.median(r[index] / (runs[per][i][index] if per else 1) for i, r in enumerate(runs[name]))

    params = {a: models.count_parameters(models.create(a, num_classes=10, in_chans=3)) for a in ARCHS}
    rows = [[n, f"{params[n] / 1e6:.2f}M" if n in params else "–", f"{median(n, 0):.1f}", f"{median(n, 1):,.0f}",
             f"{median(n, 0, 'rn26'):.2f}×", f"{median(n, 1, 'rn26'):.2f}×",
             f"{median(n, 0) - median(IMPORT_ONLY, 0):.1f}" if n != IMPORT_ONLY else "–"] for n in cmds]
    print_table("Cost of `tmdeploy export` (fresh process each, CPU)",
                ["process", "parameters", "wall s", "peak RSS MiB", "time / rn26", "RSS / rn26",
                 "s beyond import"], rows,
                [caption(), f"Medians of {args.repeats} interleaved rounds (each exports every model once); ratios "
                 "are medians of the per-round ratio to rn26; peak RSS is os.wait4's ru_maxrss of each child."])


if __name__ == "__main__":
    main()
