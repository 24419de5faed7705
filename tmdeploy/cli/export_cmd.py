"""`tmdeploy export`: checkpoint → ONNX (and, as asked, a TensorRT engine or a Triton repository)."""

from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, load_checkpoint

FORMATS = ("onnx", "trt", "triton")


def register(sub) -> None:
    from tmdeploy.export.choices import DEFAULT_FORM, DEFAULT_OPSET, FORMS

    p = sub.add_parser("export", help="export a checkpoint to ONNX, TensorRT or a Triton model repository")
    add_checkpoint_args(p)
    p.add_argument("--format", default="onnx", help=f"{' | '.join(FORMATS)} (default onnx)")
    p.add_argument("--out", type=Path, default=None, help="output path (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, at least 13 (default {DEFAULT_OPSET})")
    p.add_argument("--tm-form", default=DEFAULT_FORM, help=f"template-matching export form: {' | '.join(FORMS)}")
    p.add_argument("--patch-logits", action="store_true", help="add the per-patch class map as a second output")
    p.add_argument("--bake-preprocess", action="store_true",
                   help="graph takes uint8 N×H×W×C pixels and scales/normalizes inside")
    low = p.add_argument_group("lower precision, in the graph (verified on ONNX Runtime by tmdeploy check)")
    low.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8 (default fp32)")
    low.add_argument("--int8-target", default="tensorrt",
                     help="tensorrt (symmetric signed, as TensorRT requires) | onnxruntime (unsigned activations, "
                          "fast on x86 CPUs)")
    low.add_argument("--calib-data", default=None,
                     help="calibration data (default: the data the checkpoint was trained on, as its card records)")
    low.add_argument("--keep-fp32", default="", help="fp16: comma-separated op types or node names kept in FP32")
    trt = p.add_argument_group("TensorRT (--format trt) and Triton (--format triton)")
    trt.add_argument("--batch", default="1,32,256", help="optimization profile MIN,OPT,MAX (default 1,32,256)")
    trt.add_argument("--workspace-mib", type=int, default=None, help="TensorRT workspace limit in MiB")
    trt.add_argument("--timing-cache", type=Path, default=None, help="TensorRT timing cache file, reused across builds")
    trt.add_argument("--force", action="store_true", help="rebuild the engine even if an identical one exists")
    trt.add_argument("--triton-model", default="auto", choices=("auto", "onnx", "trt"),
                     help="what the Triton repository serves (default auto: an engine built here where TensorRT is "
                          "installed, else the ONNX file)")
    p.set_defaults(func=run)


def run(args) -> int:
    import tempfile

    from tmdeploy.engines import parse_batch
    from tmdeploy.errors import UsageError
    from tmdeploy.export import ExportOptions, export_onnx
    from tmdeploy.fileio import check_output

    if args.format not in FORMATS:
        raise UsageError(f"unknown --format '{args.format}'; choose one of: {', '.join(FORMATS)}")
    options = ExportOptions(opset=args.opset, tm_form=args.tm_form, patch_logits=args.patch_logits,
                            bake_preprocess=args.bake_preprocess, precision=args.precision,
                            int8_target=args.int8_target, calib_data=args.calib_data,
                            keep_fp32=tuple(k for k in args.keep_fp32.split(",") if k))
    options.validate()  # before the (slow) checkpoint load and export, so a bad option fails at once
    batch = parse_batch(args.batch)
    if args.out is not None and args.format != "triton":  # a Triton --out is the repository directory
        check_output(args.out, args.checkpoint, option="--out")
    engine = args.format == "trt" or (args.format == "triton" and _triton_engine(args.triton_model))
    if engine:  # before anything is written: without TensorRT a failed export changes no file
        from tmdeploy.engines.tensorrt import import_tensorrt

        import_tensorrt()
    ckpt = load_checkpoint(args)
    with tempfile.TemporaryDirectory(prefix="tmdeploy-") as scratch:
        # Triton gets copies in its repository: the ONNX file and engine are built in scratch space, so
        # nothing is written beside the checkpoint, outside --out.
        onnx_out = args.out if args.format == "onnx" else Path(scratch, "model.onnx") if args.format == "triton" else None
        path = export_onnx(ckpt, onnx_out, options)
        if args.format != "triton":
            print(f"wrote {path}")
        if engine:
            from tmdeploy.engines.tensorrt import build_engine

            engine_out = args.out if args.format == "trt" else None
            path = build_engine(path, engine_out, batch=batch, workspace_mib=args.workspace_mib,
                                timing_cache=args.timing_cache, force=args.force)
            if args.format != "triton":
                print(f"wrote {path} (+ {path.name}.json sidecar)")
        if args.format == "triton":
            from tmdeploy.engines.triton import model_name, write_model_repository

            repo = args.out or args.checkpoint.parent / "model_repository"
            model_dir = write_model_repository(path, repo, name=model_name(args.checkpoint), max_batch_size=batch.max)
            served = "a TensorRT engine" if engine else "the ONNX file (onnxruntime)"
            print(f"wrote Triton model repository {model_dir}, serving {served}")
    return 0


def _triton_engine(choice: str) -> bool:
    """Whether the Triton repository serves an engine: ``auto`` means where TensorRT is installed."""
    if choice != "auto":
        return choice == "trt"
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None

