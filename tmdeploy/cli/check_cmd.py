"""`tmdeploy check`: polygraphy parity check of an ONNX file against its PyTorch checkpoint."""

from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, int_list, load_checkpoint


def register(sub) -> None:
    p = sub.add_parser("check", help="compare an ONNX file with the PyTorch checkpoint (exit 0 pass, 1 mismatch)")
    add_checkpoint_args(p)
    p.add_argument("onnx", type=Path, nargs="?", help="ONNX file exported from the checkpoint")
    p.add_argument("--data", default=None, help="inputs from a data source (default: seeded random)")
    p.add_argument("--batch", default="1,7", help="batch sizes to check (default 1,7)")
    p.add_argument("--iterations", type=int, default=2, help="iterations per batch size (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default by precision)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default by precision)")
    p.add_argument("--min-top1", type=float, default=None, help="minimum top-1 agreement (default by precision)")
    p.add_argument("--save-inputs", type=Path, default=None, help="inputs in polygraphy's JSON format")
    p.add_argument("--save-outputs", type=Path, default=None, help="PyTorch outputs as polygraphy RunResults JSON")
    p.add_argument("--localize", action="store_true", help="on failure, name the first diverging block")
    p.add_argument("--report-dir", type=Path, default=None, help="where to write the JSON/Markdown report "
                   "(default: beside the ONNX file)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tmdeploy.errors import UsageError
    from tmdeploy.verify import CheckOptions, check, write_report

    if args.onnx is None:
        if args.checkpoint.suffix == ".onnx":
            raise UsageError("check needs the source checkpoint too: tmdeploy check CHECKPOINT MODEL.onnx")
        raise UsageError("check needs an ONNX file: tmdeploy check CHECKPOINT MODEL.onnx")
    options = CheckOptions(
        batches=int_list(args.batch, "--batch"), iterations=args.iterations, data=args.data, seed=args.seed,
        atol=args.atol, rtol=args.rtol, min_top1=args.min_top1, save_inputs=args.save_inputs,
        save_outputs=args.save_outputs, localize=args.localize,
    )
    options.validate()
    report = check(load_checkpoint(args), args.onnx, options)
    json_path, md_path = write_report(report, args.report_dir or args.onnx.parent, args.onnx.stem)
    print(report.to_markdown(), end="")
    print(f"report: {json_path}, {md_path}")
    return 0 if report.passed else 1
