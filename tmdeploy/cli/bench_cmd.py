"""`tmdeploy bench`: latency, throughput and accuracy of a checkpoint on every backend, side by side."""

from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, int_list, load_checkpoint


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark PyTorch, torch.compile, onnxruntime (FP32/FP16/INT8) and TensorRT")
    add_checkpoint_args(p)
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--batch", default="1,32,256", help="batch sizes (default 1,32,256)")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset (default: all for the device; an unknown name lists them)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="seconds of timed iterations per backend and batch size (default 1.0)")
    p.add_argument("--min-iterations", type=int, default=10, help="timed iterations at least (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--data", default="auto",
                   help="data for accuracy (test split) and FP16/INT8 calibration (train split); default auto: the "
                        "data the checkpoint was trained on; 'none' skips accuracy")
    p.add_argument("--accuracy-limit", type=int, default=None, help="at most this many test images")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch and onnxruntime alike (default: each library's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-dir", type=Path, default=None,
                   help="where to write bench.json, bench.md and the plots (default: <checkpoint>-bench/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from tmdeploy.bench import BenchOptions
    from tmdeploy.bench import run as bench
    from tmdeploy.report import to_markdown, write_report

    options = BenchOptions(
        device=args.device, batches=int_list(args.batch, "--batch"),
        backends=tuple(n.strip() for n in args.backends.split(",")) if args.backends else None,
        min_time=args.min_time, min_iterations=args.min_iterations, warmup=args.warmup,
        data=None if args.data.lower() == "none" else args.data, accuracy_limit=args.accuracy_limit,
        compile_backend=args.compile_backend, threads=args.threads, seed=args.seed, show_progress=not args.quiet,
    )
    options.validate()  # before the (slow) checkpoint load and export, so a bad option fails at once
    result = bench(load_checkpoint(args), options)
    directory = args.report_dir or args.checkpoint.with_name(f"{args.checkpoint.stem}-bench")
    paths = write_report(result, directory)
    print(to_markdown(result.to_dict()), end="")
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return 0
