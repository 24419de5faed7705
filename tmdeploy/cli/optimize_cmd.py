"""`tmdeploy optimize`: which file to ship — every candidate built, checked, timed, and the best one chosen."""

import argparse
import sys
from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, api_option, api_values, comma_list, int_list, load_checkpoint

OPT = "tmdeploy.optimize.options:OptimizeOptions"


def register(sub) -> None:
    from tmdeploy.optimize.options import PROFILE_S, QUICK_PROFILE_S, QUICK_WINDOW_S, STRATEGIES, TARGETS, WINDOW_S
    from tmdeploy.runtimes import RUNTIMES

    p = sub.add_parser("optimize", help="the fastest deployment that keeps accuracy, chosen by measurement "
                                        "(exit 0: a candidate passed, 1: none did)")
    add_checkpoint_args(p)
    api_option(p, "--device", OPT, choices=TARGETS,
               help="where the model will run (cuda: onnxruntime's CUDA provider, its CUDA graph, TensorRT)")
    api_option(p, "--target", OPT, help=argparse.SUPPRESS)  # deprecated: --device's old name, for one release
    api_option(p, "--strategy", OPT, nargs="+", metavar="NAME [MS]", choices=STRATEGIES,
               help="how to choose: min-latency, max-throughput, or max-throughput-under-latency MS")
    api_option(p, "--batch", OPT, "batches", help="batch sizes to time")
    api_option(p, "--max-top1-drop", OPT, type=float, help="most top-1 points below PyTorch FP32 on held-out data")
    api_option(p, "--min-agreement", OPT, type=float, help="least share of held-out images with PyTorch's top-1")
    api_option(p, "--min-top1", OPT, type=float, shown="none", help="absolute top-1 floor (fraction)")
    api_option(p, "--forms", OPT, shown="all (--quick: the default form)", help="comma-separated TM export forms")
    api_option(p, "--precisions", OPT, help="comma-separated precisions")
    api_option(p, "--int8-recipes", OPT, shown="cpu: the onnxruntime recipes this CPU's features call for, and "
                                               "tensorrt; cuda: tensorrt",
               help="comma-separated INT8 recipes")
    api_option(p, "--exporters", OPT, help="comma-separated torch.onnx exporters")
    api_option(p, "--runtimes", OPT, shown="every one installed for the --device",
               help="comma-separated runtimes that run the files ("
                    + "; ".join(f"{device}: {', '.join(names)}" for device, names in RUNTIMES.items()) + ")")
    api_option(p, "--data", OPT, help="held-out (test split) and calibration (train split) data; auto: the data the "
                                      "checkpoint was trained on")
    api_option(p, "--accuracy-limit", OPT, type=int, shown="all (--quick: 256)", help="at most this many test images")
    api_option(p, "--atol", OPT, type=float, shown="by precision", help="parity: absolute tolerance")
    api_option(p, "--rtol", OPT, type=float, shown="by precision", help="parity: relative tolerance")
    api_option(p, "--window-s", OPT, type=float, shown=f"{WINDOW_S:g} (--quick: {QUICK_WINDOW_S:g})",
               help="seconds per candidate in one timing window")
    api_option(p, "--profile-s", OPT, type=float, shown=f"{PROFILE_S:g} (--quick: {QUICK_PROFILE_S:g})",
               help="time budget of all timing windows")
    api_option(p, "--stable-within", OPT, type=float,
               help="two timing windows agree: the same fastest candidate, its speed-up moved less than this")
    api_option(p, "--screen-slower", OPT, type=float,
               help="after the first timing window, drop candidates this many times slower than the fastest")
    api_option(p, "--threads", OPT, type=int, shown="onnxruntime's own", help="CPU threads for every candidate")
    api_option(p, "--seed", OPT, type=int, help="seed of the parity and timing inputs and the data split")
    api_option(p, "--quick", OPT, action="store_true",
               help="the default form only, short timing: about a minute (what you set yourself stays)")
    api_option(p, "--out", OPT, type=Path, shown="<checkpoint>-optimized/",
               help="output folder: model.onnx, status.json, report.md, latency.png, candidates/, repro/")
    p.add_argument("--quiet", action="store_true", help="no live table")
    p.set_defaults(func=run)


def options(args):
    from tmdeploy.errors import UsageError
    from tmdeploy.optimize.options import OptimizeOptions

    values = api_values(args, OptimizeOptions, batches=lambda text: int_list(text, "--batch"), forms=comma_list,
                        precisions=comma_list, int8_recipes=comma_list, exporters=comma_list,
                        runtimes=comma_list)
    strategy = values.pop("strategy", None)
    if strategy is not None:
        if len(strategy) > 2:
            raise UsageError(f"--strategy takes a name and at most one number, got {' '.join(strategy)}")
        values["strategy"] = strategy[0]
        if len(strategy) == 2:
            try:
                values["latency_ms"] = float(strategy[1])
            except ValueError:
                raise UsageError(f"--strategy {strategy[0]} MS: MS is milliseconds, got '{strategy[1]}'") from None
    return OptimizeOptions(**values, show_progress=not args.quiet)


def run(args) -> int:
    from tmdeploy.errors import TmdeployError
    from tmdeploy.optimize import optimize
    from tmdeploy.optimize.options import OUTPUT_FILES
    from tmdeploy.report import write_optimize_report

    opt = options(args)
    opt.effective().validate()  # before the (slow) checkpoint load, so a bad option fails at once
    if args.target is not None:
        print("tmdeploy: warning: --target is deprecated and goes in the next release: use --device",
              file=sys.stderr)
    ckpt = load_checkpoint(args)
    result = optimize(ckpt, opt, report=write_optimize_report)  # the report is committed with the rest
    decision = result.record.decision
    shown = [OUTPUT_FILES[k] for k in ("status", "report", "latency", "model") if OUTPUT_FILES[k] in result.files]
    print(f"wrote {result.out}/: {', '.join(shown)}")
    if decision is None:
        raise TmdeployError(f"no candidate passed; see {result.out / OUTPUT_FILES['report']}")
    speedup = decision.get("speedup_vs_default")
    print(f"chose {decision['chosen']} by {decision['strategy']}: batch {decision['batch']}, p50 "
          f"{decision['p50_ms']:.3g} ms, {decision['throughput']:,.0f} images/s"
          + (f", {speedup:.2f}x the default FP32 export" if speedup else ""))
    return 0
