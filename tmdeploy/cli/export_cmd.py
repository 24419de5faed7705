"""`tmdeploy export`: checkpoint → ONNX (and, as asked, a TensorRT engine or a Triton repository)."""

from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, api_option, api_values, comma_list, load_checkpoint

EXPORT = "tmdeploy.export.options:ExportOptions"
TARGET = "tmdeploy.engines.options:TargetOptions"


def register(sub) -> None:
    from tmdeploy.engines.options import FORMATS, TRITON_MODELS
    from tmdeploy.export.options import AUTO_FORM, EXPORTERS, FORMS, INT8_TARGETS, PRECISIONS

    p = sub.add_parser("export", help="export a checkpoint to ONNX, TensorRT or a Triton model repository")
    add_checkpoint_args(p)
    api_option(p, "--format", TARGET, choices=FORMATS, help="what to write")
    p.add_argument("--out", type=Path, default=None, help="output path (default: beside the checkpoint)")
    api_option(p, "--opset", EXPORT, type=int, help="ONNX opset, at least 13")
    api_option(p, "--tm-form", EXPORT, choices=(*FORMS, AUTO_FORM),
               help="template-matching export form (docs/models.md); auto: time them on ONNX Runtime CPU for this "
                    "model and export the fastest, its timings in the metadata")
    api_option(p, "--exporter", EXPORT, choices=EXPORTERS,
               help="torch.onnx exporter: torchscript (fast) or dynamo (torch.export); the graphs agree after clean-up")
    api_option(p, "--patch-logits", EXPORT, action="store_true", help="add the per-patch class map as a second output")
    api_option(p, "--bake-preprocess", EXPORT, action="store_true",
               help="graph takes uint8 N×H×W×C pixels and scales/normalizes inside")
    low = p.add_argument_group("lower precision, in the graph (verified on ONNX Runtime by tmdeploy check)")
    api_option(low, "--precision", EXPORT, choices=PRECISIONS, help="precision of the graph")
    api_option(low, "--int8-target", EXPORT, choices=INT8_TARGETS,
               help="tensorrt (symmetric signed, as TensorRT requires) or onnxruntime (unsigned activations, "
                    "fast on x86 CPUs)")
    api_option(low, "--calib-data", EXPORT, shown="the data the checkpoint was trained on, as its card records",
               help="calibration data")
    api_option(low, "--keep-fp32", EXPORT, help="fp16: comma-separated op types or node names kept in FP32")
    trt = p.add_argument_group("TensorRT (--format trt) and Triton (--format triton)")
    api_option(trt, "--batch", TARGET, help="optimization profile MIN,OPT,MAX (MAX: Triton's max_batch_size)")
    api_option(trt, "--workspace-mib", TARGET, type=int, shown="TensorRT's own", help="TensorRT workspace limit in MiB")
    api_option(trt, "--timing-cache", TARGET, type=Path, shown="beside the engine",
               help="TensorRT timing cache file, reused across builds")
    api_option(trt, "--force", TARGET, action="store_true", help="rebuild the engine even if an identical one exists")
    api_option(trt, "--triton-model", TARGET, choices=TRITON_MODELS,
               help="what the Triton repository serves: an engine built here, or the ONNX file; auto: an engine "
                    "where TensorRT is installed, else the ONNX file")
    p.set_defaults(func=run)


def options(args):
    """The API's options for these arguments: (ExportOptions, TargetOptions)."""
    from tmdeploy.engines.options import TargetOptions
    from tmdeploy.export.options import ExportOptions

    return (ExportOptions(**api_values(args, ExportOptions, keep_fp32=comma_list)),
            TargetOptions(**api_values(args, TargetOptions)))


def run(args) -> int:
    import tempfile

    from tmdeploy.errors import UsageError
    from tmdeploy.export import export_onnx
    from tmdeploy.export.options import AUTO_FORM
    from tmdeploy.fileio import check_output, check_output_dir

    export, target = options(args)
    export.validate()  # before the (slow) checkpoint load and export, so a bad option fails at once
    target.validate()
    batch = target.profile()
    engine = target.builds_engine()
    if target.format == "triton":  # a Triton --out is the repository directory; other models' files stay
        from tmdeploy.engines.triton import check_model_dir, model_files, model_name

        repo = args.out or args.checkpoint.parent / "model_repository"
        check_output_dir(repo, option="--out")
        platform = "tensorrt_plan" if engine else "onnxruntime_onnx"
        check_model_dir(repo / model_name(args.checkpoint), model_files(platform))
    elif args.out is not None:
        check_output(args.out, args.checkpoint, option="--out")
    onnx_out = args.out
    if target.format == "trt" and args.out is not None:  # the ONNX file goes beside the engine, not the checkpoint
        onnx_out = args.out.with_suffix(".onnx")
        if onnx_out == args.out:
            raise UsageError(f"--out {args.out}: with --format trt it names the engine; use a .plan or .engine suffix")
        check_output(onnx_out, args.checkpoint, option="--out")
    if target.timing_cache is not None:  # TensorRT writes it: the same rules as every other output
        check_output(target.timing_cache, args.checkpoint, option="--timing-cache")
    if engine:  # before anything is written: without TensorRT a failed export changes no file
        from tmdeploy.engines.tensorrt import UNSIGNED_INT8, import_tensorrt

        if export.precision == "int8" and export.int8_target != "tensorrt":
            raise UsageError(f"--format {target.format} builds a TensorRT engine, and an INT8 graph that {UNSIGNED_INT8}")
        import_tensorrt()
    ckpt = load_checkpoint(args)
    with tempfile.TemporaryDirectory(prefix="tmdeploy-") as scratch:
        # Triton gets copies in its repository: the ONNX file and engine are built in scratch space, so
        # nothing is written beside the checkpoint, outside --out.
        if target.format == "triton":
            onnx_out = Path(scratch, "model.onnx")
        if export.tm_form == AUTO_FORM:
            from tmdeploy.optimize import export_auto

            path = export_auto(ckpt, onnx_out, export)
        else:
            path = export_onnx(ckpt, onnx_out, export)
        if target.format != "triton":
            print(f"wrote {path}")
        if engine:
            from tmdeploy.engines.tensorrt import build_engine

            engine_out = args.out if target.format == "trt" else None
            path = build_engine(path, engine_out, batch=batch, workspace_mib=target.workspace_mib,
                                timing_cache=target.timing_cache, force=target.force)
            if target.format != "triton":
                print(f"wrote {path} (+ {path.name}.json sidecar)")
        if target.format == "triton":
            from tmdeploy.engines.triton import write_model_repository

            model_dir = write_model_repository(path, repo, name=model_name(args.checkpoint), max_batch_size=batch.max)
            served = "a TensorRT engine" if engine else "the ONNX file (onnxruntime)"
            print(f"wrote Triton model repository {model_dir}, serving {served}")
    return 0

