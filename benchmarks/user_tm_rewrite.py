"""Benchmark: a user's template-matching network, written from the paper's formula, as torch.onnx.export
gives it, against the same graph after tmdeploy's block rewrite (tmdeploy/export/template_blocks.py), and
against the same network built from tmdeploy's own layer (the zoo's rn26-tm, exported by ``to_model_proto``
with the PyTorch-level form); onnxruntime FP32 on the CPU, batch 1 and 32.

Goal at batch 32: the rewritten graph at least 1.3× faster than the raw export, and within 5 % of
tmdeploy's own layer. All graphs run interleaved in one timing run; a ratio is the median over rounds of
the paired per-round ratio. The user network below is rn26-tm's architecture written by hand (every block
``ν · softmax([s ; μ] / τ)[:, :K]`` with ``torch.cat`` and ``expand``) and carries a seeded, untrained rn26-tm's
weights with μ = 0.4 and τ = exp(−0.3), so the three graphs compute the same function (the note gives the
largest difference). 3×32×32 input.

    PYTHONPATH=. python benchmarks/user_tm_rewrite.py [--min-time 3] [--threads 1] [--form normalized]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import torch
from _common import caption, number, print_table, untrained
from torch import nn

from tmdeploy.bench.sessions import OrtSession
from tmdeploy.bench.timing import Budget, measure, paired_ratio
from tmdeploy.export import DEFAULT_FORM, FORMS, ExportOptions, graph, to_model_proto, to_onnx
from tmdeploy.export.template_blocks import rewrite_template_blocks

BATCHES = (1, 32)
SPEEDUP_GOAL, OWN_LAYER_TOLERANCE = 1.3, 1.05
RAW, REWRITTEN, OWN = "user net, as exported", "user net, rewritten", "tmdeploy layer (rn26-tm)"


class UserTemplateMatching(nn.Module):
    """The paper's block as a user writes it: soft-max over K scores and a broadcast null logit."""

    def __init__(self, in_channels: int, out_channels: int, k: int, stride: int) -> None:
        super().__init__()
        self.templates = nn.Conv2d(in_channels, k, 3, stride, padding=1)
        self.values = nn.Conv2d(k, out_channels, 1, bias=False)
        self.null_logit = nn.Parameter(torch.zeros(()))
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.templates(x)
        n, k, h, w = s.shape
        logits = torch.cat([s, self.null_logit.expand(n, 1, h, w)], 1) / self.log_temperature.exp()
        return self.values(torch.softmax(logits, 1)[:, :k])


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-6)


class UserBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, width: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, width, 1, bias=False)
        self.tm = UserTemplateMatching(width, out_channels, width, stride)
        same = in_channels == out_channels and stride == 1
        self.shortcut = nn.Identity() if same else nn.Conv2d(in_channels, out_channels, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.tm(rms_norm(self.reduce(x)))


class Head(nn.Module):
    def __init__(self, in_features: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(rms_norm(x).mean((2, 3)))


class UserNet(nn.Module):
    """rn26-tm's shape: 32-wide stem, stages 64/128/256 of 2/2/4 blocks, bottleneck widths 16/48/128."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        stages, width_in = [], 32
        for width, depth, stride, bottleneck in zip((64, 128, 256), (2, 2, 4), (1, 2, 2), (16, 48, 128)):
            stages.append(nn.Sequential(*(UserBlock(width_in if i == 0 else width, width, stride if i == 0 else 1,
                                                    bottleneck) for i in range(depth))))
            width_in = width
        self.stages = nn.ModuleList(stages)
        self.head = Head(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def graphs(form: str) -> dict[str, onnx.ModelProto]:
    ckpt = untrained("rn26-tm")
    for name, value in ckpt.state_dict.items():
        if name.endswith("null_logit"):
            value.fill_(0.4)
        elif name.endswith("log_temperature"):
            value.fill_(-0.3)
    user = UserNet().eval()
    user.load_state_dict(ckpt.state_dict)  # strict: the same parameters under the same names
    raw, _ = to_onnx._EXPORTERS["torchscript"](user, torch.randn(2, 3, 32, 32), 18, ["logits"])  # torch.onnx.export
    rewritten, report = rewrite_template_blocks(graph.clean_up(raw), form)
    assert report.counts == {form: 8} and not report.unrecognised, report
    return {RAW: raw, REWRITTEN: rewritten, OWN: to_model_proto(ckpt, ExportOptions(tm_form=form))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=3.0, help="timed seconds per graph and batch size")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--form", choices=FORMS, default=DEFAULT_FORM, help="the form the blocks are lowered to")
    args = parser.parse_args()
    protos = graphs(args.form)
    sessions = {name: OrtSession(p, ["CPUExecutionProvider"], args.threads) for name, p in protos.items()}
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    outputs = {name: s.fetch(s.bind(x)()) for name, s in sessions.items()}
    spread = max(float(np.abs(out - outputs[RAW]).max()) for out in outputs.values())
    budget = Budget(min_time=args.min_time, min_iterations=20, min_rounds=10)
    rows = []
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        samples = measure({name: s.bind(x) for name, s in sessions.items()}, budget)
        speedup = paired_ratio(samples[RAW], samples[REWRITTEN])
        versus_own = 1.0 / paired_ratio(samples[OWN], samples[REWRITTEN])
        for name, s in samples.items():
            verdict = ""
            if batch == 32 and name == REWRITTEN:
                verdict = (f"≥ {SPEEDUP_GOAL}× raw: {'met' if speedup >= SPEEDUP_GOAL else 'missed'}; "
                           f"≤ {OWN_LAYER_TOLERANCE}× own: {'met' if versus_own <= OWN_LAYER_TOLERANCE else 'missed'}")
            rows.append([name, str(batch), number(float(np.median(s.times)) * 1e3),
                         f"{paired_ratio(samples[RAW], s):.2f}×", f"{1.0 / paired_ratio(samples[OWN], s):.2f}×",
                         str(len(s.times)), verdict])
    print_table(f"A user's TM network: raw export vs tmdeploy's rewrite ({args.form}) vs tmdeploy's own layer "
                "(onnxruntime FP32, CPU)",
                ["graph", "batch", "p50 ms", "speed-up over raw", "latency / own layer", "iterations",
                 "goal (batch 32)"], rows,
                [caption(ort_threads=args.threads),
                 "Untrained seeded rn26-tm weights (μ = 0.4, τ = exp(−0.3)) in both networks, 3×32×32 input; ratios "
                 "are medians over interleaved rounds of per-round latency ratios.",
                 f"Largest logit difference between the three graphs on 8 random images: {spread:.1e}.",
                 f"Ops, raw: {graph.op_histogram(protos[RAW])}", f"Ops, rewritten: {graph.op_histogram(protos[REWRITTEN])}"])


if __name__ == "__main__":
    main()
