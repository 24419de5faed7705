"""``export --tm-form auto``: the TM export form that runs fastest for this model, measured, not assumed.

Which form is fastest depends on the runtime and the model (benchmarks/tm_forms.py); this times every form's
graph on ONNX Runtime CPU, interleaved and paired as ``tmdeploy bench`` times backends, and exports the
fastest with the timings in its metadata (``tm_form_timings``), so the file says why it has its form.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from tmdeploy.bench import machine
from tmdeploy.bench.sessions import OrtSession
from tmdeploy.bench.timing import Budget, latency_stats, measure, paired_ratio
from tmdeploy.checkpoint import as_deployable
from tmdeploy.export.options import DEFAULT_FORM, FORMS, ExportOptions
from tmdeploy.export.to_onnx import default_output, save_model, to_model_proto
from tmdeploy.errors import TmdeployError
from tmdeploy.fileio import check_output

TIMINGS_KEY = "tm_form_timings"
AUTO_BATCHES = (1, 32)
AUTO_BUDGET = Budget(min_time=0.5, min_iterations=10, min_rounds=5, warmup=2)


def fastest_form(model, options: ExportOptions, threads: int | None = None,
                 batches: tuple[int, ...] = AUTO_BATCHES, budget: Budget = AUTO_BUDGET) -> tuple[onnx.ModelProto, dict]:
    """Every form's graph (in ``options``' precision) timed side by side; the fastest by the geometric mean
    over ``batches`` of its paired speed-up over the default form, with the timings in its metadata."""
    ckpt = as_deployable(model)
    protos = {form: to_model_proto(ckpt, replace(options, tm_form=form)) for form in FORMS}
    sessions = {form: OrtSession(proto, ["CPUExecutionProvider"], threads) for form, proto in protos.items()}
    per_batch = {}
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, *ckpt.card.input_size)).astype(np.float32)
        samples = measure({form: s.bind(x) for form, s in sessions.items()}, budget)
        failed = next((form for form, s in samples.items() if s.error is not None), None)
        if failed is not None:  # out of memory, most often: a form that cannot run cannot be timed
            raise TmdeployError(f"--tm-form auto: the {failed} form's graph failed on onnxruntime at batch {batch} "
                                f"({samples[failed].error}); export a form by name")
        per_batch[str(batch)] = {form: {"p50_ms": latency_stats(s.times, batch)["p50_ms"],
                                        "speedup_vs_default": paired_ratio(samples[DEFAULT_FORM], s)}
                                 for form, s in samples.items()}
    score = {form: math.exp(np.mean([math.log(per_batch[str(b)][form]["speedup_vs_default"]) for b in batches]))
             for form in FORMS}
    chosen = max(FORMS, key=score.get)
    timings = {"chosen": chosen, "runtime": "onnxruntime CPU", "threads": threads or "default",
               "cpu": machine.cpu_model(), "score": score, "batches": per_batch,
               "rule": "geometric mean over batch sizes of the paired speed-up over the default form"}
    proto = protos[chosen]
    entry = proto.metadata_props.add()
    entry.key, entry.value = TIMINGS_KEY, json.dumps(timings)
    return proto, timings


def export_auto(model, out: Path | None = None, options: ExportOptions = ExportOptions(tm_form="auto"),
                threads: int | None = None, budget: Budget = AUTO_BUDGET) -> Path:
    """``export_onnx`` with the form chosen by :func:`fastest_form` (``options.tm_form`` is ignored)."""
    ckpt = as_deployable(model)
    out = Path(out) if out is not None else default_output(ckpt, ".onnx")
    check_output(out, ckpt.path, option="--out")  # before the timing: a bad target fails at once
    proto, _ = fastest_form(ckpt, options, threads, budget=budget)
    return save_model(proto, out, ckpt.path)
