"""`tmdeploy bench`: latency, throughput and accuracy of a checkpoint on every backend, side by side."""

from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, api_option, api_values, comma_list, int_list, load_checkpoint

BENCH = "tmdeploy.bench.options:BenchOptions"


def register(sub) -> None:
    from tmdeploy.bench.options import DEVICES

    p = sub.add_parser("bench", help="benchmark PyTorch, torch.compile, onnxruntime (FP32/FP16/INT8) and TensorRT")
    add_checkpoint_args(p)
    api_option(p, "--device", BENCH, choices=DEVICES, help="where to run")
    api_option(p, "--batch", BENCH, "batches", help="batch sizes")
    api_option(p, "--backends", BENCH, shown="all for the device",
               help="comma-separated subset (an unknown name lists them)")
    api_option(p, "--min-time", BENCH, type=float, help="seconds of timed iterations per backend and batch size")
    api_option(p, "--min-iterations", BENCH, type=int, help="timed iterations at least")
    api_option(p, "--warmup", BENCH, type=int, help="untimed calls before timing")
    api_option(p, "--data", BENCH, help="data for accuracy (test split) and FP16/INT8 calibration (train split); "
                                        "auto: the data the checkpoint was trained on; 'none' skips accuracy")
    api_option(p, "--accuracy-limit", BENCH, type=int, shown="all", help="at most this many test images")
    api_option(p, "--compile-backend", BENCH, help="torch.compile backend")
    api_option(p, "--threads", BENCH, type=int, shown="each library's own",
               help="CPU threads for PyTorch and every ONNX runtime alike")
    api_option(p, "--seed", BENCH, type=int, help="seed of the timing inputs and the data split")
    api_option(p, "--min-top1", BENCH, type=float, shown="none",
               help="top-1 floor (fraction): a backend below it, or one that fails, makes the exit status 1")
    api_option(p, "--min-agreement", BENCH, type=float, shown="none",
               help="floor (fraction) on agreement with PyTorch eager's top-1, as --min-top1")
    p.add_argument("--report-dir", type=Path, default=None,
                   help="where to write bench.json, bench.md and the plots (default: <checkpoint>-bench/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def options(args):
    from tmdeploy.bench.options import BenchOptions

    values = api_values(args, BenchOptions, batches=lambda text: int_list(text, "--batch"), backends=comma_list)
    if values.get("data", "").lower() == "none":
        values["data"] = None
    return BenchOptions(**values, show_progress=not args.quiet)


def run(args) -> int:
    from tmdeploy.bench import run as bench
    from tmdeploy.bench.suite import floor_failures
    from tmdeploy.errors import TmdeployError
    from tmdeploy.fileio import check_output_dir
    from tmdeploy.report import FILES, to_markdown, write_report

    bench_options = options(args)
    bench_options.validate()  # before the (slow) checkpoint load and export, so a bad option fails at once
    directory = args.report_dir or args.checkpoint.with_name(f"{args.checkpoint.stem}-bench")
    check_output_dir(directory, FILES.values(), args.checkpoint, option="--report-dir")
    result = bench(load_checkpoint(args), bench_options)
    paths = write_report(result, directory)
    print(to_markdown(result.to_dict()), end="")
    print("report: " + ", ".join(str(p) for p in paths.values()))
    failures = floor_failures(result)
    if failures:
        raise TmdeployError(f"below the floor: {', '.join(failures)}")
    return 0
