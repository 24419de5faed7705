"""Benchmark 4: the cost of `tmdeploy export` with each exporter (TorchScript, dynamo), side by side.

Two measures, both interleaved (every round runs every model with every exporter once) and reported as
medians:

- a fresh ``python -m tmdeploy export --exporter E`` process: wall time, and peak resident memory from the
  kernel's ``ru_maxrss`` for that one child (``os.wait4``); a process that only imports the export stage
  is measured alongside, so the table shows what exporting adds to the import cost;
- ``to_model_proto`` in this process (export and clean-up only, imports paid), with the graph it gives:
  node count and the largest difference between the two exporters' outputs on onnxruntime.

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

import numpy as np
import onnxruntime as ort
from _common import caption, print_table, untrained

from tmdeploy import checkpoint
from tmdeploy.export import ExportOptions, to_model_proto
from tmdeploy.export.options import EXPORTERS

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


def in_process(ckpt, exporter: str):
    """Seconds of one export in this process, and the graph."""
    start = time.perf_counter()
    proto = to_model_proto(ckpt, ExportOptions(exporter=exporter))
    return time.perf_counter() - start, proto


def outputs(proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each running every export once (default 3)")
    args = parser.parse_args()
    ckpts = {arch: untrained(arch) for arch in ARCHS}
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="tmdeploy-export-cost-") as tmp:
        cmds = {IMPORT_ONLY: ["-c", "import tmdeploy.cli.export_cmd, tmdeploy.export.to_onnx"]}
        for arch, ckpt in ckpts.items():
            path = Path(tmp) / f"{arch}.pt"
            checkpoint.save(path, ckpt.build_model(), ckpt.card)
            for exporter in EXPORTERS:
                cmds[arch, exporter] = ["-m", "tmdeploy", "export", str(path), "--exporter", exporter,
                                        "--out", str(Path(tmp) / f"{arch}-{exporter}.onnx")]
        fresh: dict = {name: [] for name in cmds}
        inproc: dict = {(a, e): [] for a in ARCHS for e in EXPORTERS}
        graphs: dict = {}
        for _ in range(args.repeats):
            for name, argv in cmds.items():
                fresh[name].append(run_child(argv))
            for arch, exporter in inproc:
                seconds, graphs[arch, exporter] = in_process(ckpts[arch], exporter)
                inproc[arch, exporter].append(seconds)

    def median(values) -> float:
        return statistics.median(values)

    rows = [[IMPORT_ONLY, "–", f"{median(r[0] for r in fresh[IMPORT_ONLY]):.1f}",
             f"{median(r[1] for r in fresh[IMPORT_ONLY]):,.0f}", "–", "–", "–", "–"]]
    for arch in ARCHS:
        reference = outputs(graphs[arch, EXPORTERS[0]], x)
        for exporter in EXPORTERS:
            runs, proto = fresh[arch, exporter], graphs[arch, exporter]
            ratio = median(r[0] / fresh[arch, EXPORTERS[0]][i][0] for i, r in enumerate(runs))
            diff = float(np.abs(outputs(proto, x) - reference).max())
            rows.append([arch, exporter, f"{median(r[0] for r in runs):.1f}", f"{median(r[1] for r in runs):,.0f}",
                         f"{ratio:.2f}×", f"{median(inproc[arch, exporter]):.2f}", str(len(proto.graph.node)),
                         f"{diff:.1e}"])
    print_table("Cost of `tmdeploy export` per exporter (CPU)",
                ["process", "exporter", "fresh process wall s", "peak RSS MiB", f"wall / {EXPORTERS[0]}",
                 "in-process export s", "graph nodes", f"max |logit − {EXPORTERS[0]}'s|"], rows,
                [caption(), f"Medians of {args.repeats} interleaved rounds; the wall ratio is the median of the "
                 f"per-round ratio to the same model's {EXPORTERS[0]} export; peak RSS is os.wait4's ru_maxrss of "
                 "each child. Graphs after tmdeploy's clean-up, default --tm-form."], text_columns=2)


if __name__ == "__main__":
    main()
