"""`tmdeploy check`: polygraphy parity check of an ONNX file against its PyTorch checkpoint."""

from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, api_option, api_values, int_list, load_checkpoint

CHECK = "tmdeploy.verify.options:CheckOptions"


def register(sub) -> None:
    from tmdeploy.runtimes import where
    from tmdeploy.verify.options import DEVICES, RUNTIMES

    p = sub.add_parser("check", help="compare an ONNX file with the PyTorch checkpoint (exit 0 pass, 1 mismatch)")
    add_checkpoint_args(p)
    p.add_argument("onnx", type=Path, nargs="?", help="ONNX file exported from the checkpoint")
    api_option(p, "--data", CHECK, shown="seeded random",
               help="compare on every test image of a data source: digits, cifar10:DIR, cifar100:DIR, folder:DIR, "
                    "npz:FILE (your arrays and split)")
    api_option(p, "--limit", CHECK, type=int, shown="all of them", help="with --data: compare on the first N images")
    api_option(p, "--batch", CHECK, "batches", help="batch sizes to check")
    api_option(p, "--iterations", CHECK, type=int, help="iterations per batch size")
    api_option(p, "--seed", CHECK, type=int, help="seed of the random inputs")
    for name, what in (("atol", "absolute tolerance"), ("rtol", "relative tolerance"), ("min-top1", "minimum top-1 agreement")):
        api_option(p, f"--{name}", CHECK, type=float, shown="by precision", help=what)
    api_option(p, "--save-inputs", CHECK, type=Path, help="inputs in polygraphy's JSON format")
    api_option(p, "--save-outputs", CHECK, type=Path, help="PyTorch outputs as polygraphy RunResults JSON")
    api_option(p, "--device", CHECK, choices=DEVICES, help="where onnxruntime runs the graph (PyTorch: on the CPU)")
    api_option(p, "--runtime", CHECK, choices=RUNTIMES,
               help="what runs the ONNX file (" + ", ".join(f"{r}: {'/'.join(where(r)).upper()}" for r in RUNTIMES)
                    + "; an optional one names its install line when missing)")
    api_option(p, "--localize", CHECK, action="store_true", help="on failure, name the first diverging block")
    p.add_argument("--report-dir", type=Path, default=None, help="where to write the JSON/Markdown report "
                   "(default: beside the ONNX file)")
    p.set_defaults(func=run)


def options(args):
    from tmdeploy.verify.options import CheckOptions

    return CheckOptions(**api_values(args, CheckOptions, batches=lambda text: int_list(text, "--batch")))


def run(args) -> int:
    from tmdeploy.errors import UsageError
    from tmdeploy.fileio import check_output, check_output_dir
    from tmdeploy.verify import check, write_report
    from tmdeploy.verify.parity import report_names

    if args.onnx is None:
        if args.checkpoint.suffix == ".onnx":
            raise UsageError("check needs the source checkpoint too: tmdeploy check CHECKPOINT MODEL.onnx")
        raise UsageError("check needs an ONNX file: tmdeploy check CHECKPOINT MODEL.onnx")
    check_options = options(args)
    check_options.validate()
    report_dir = args.report_dir or args.onnx.parent
    inputs = (args.checkpoint, args.onnx)  # no output may overwrite them, by any name
    check_output_dir(report_dir, report_names(args.onnx.stem), *inputs, option="--report-dir")
    for option, path in (("--save-inputs", check_options.save_inputs), ("--save-outputs", check_options.save_outputs)):
        if path is not None:
            check_output(path, *inputs, option=option)
    report = check(load_checkpoint(args), args.onnx, check_options)
    json_path, md_path = write_report(report, report_dir, args.onnx.stem)
    print(report.to_markdown(), end="")
    print(f"report: {json_path}, {md_path}")
    return 0 if report.passed else 1
