"""`tmdeploy export`: checkpoint → ONNX (and, as asked, a TensorRT engine or a Triton repository)."""

from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, api_option, api_values, comma_list, load_checkpoint

EXPORT = "tmdeploy.export.options:ExportOptions"
ENGINE = "tmdeploy.engines.options:EngineOptions"


def register(sub) -> None:
    from tmdeploy.engines.options import FORMATS, TRITON_MODELS
    from tmdeploy.export.options import AUTO_FORM, EXPORTERS, FORMS, INT8_TARGETS, PRECISIONS

    p = sub.add_parser("export", help="export a checkpoint to ONNX, TensorRT or a Triton model repository")
    add_checkpoint_args(p)
    api_option(p, "--format", ENGINE, choices=FORMATS, help="what to write")
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
               help="tensorrt (symmetric signed, as TensorRT requires), onnxruntime (unsigned activations, 7-bit "
                    "weights: exact on any x86 CPU) or onnxruntime-vnni (8-bit weights: CPUs with VNNI or AMX only)")
    api_option(low, "--calib-data", EXPORT, shown="the data the checkpoint was trained on, as its card records",
               help="calibration data")
    api_option(low, "--keep-fp32", EXPORT, help="fp16: comma-separated op types or node names kept in FP32")
    trt = p.add_argument_group("TensorRT (--format trt) and Triton (--format triton)")
    api_option(trt, "--batch", ENGINE, help="optimization profile MIN,OPT,MAX (MAX: Triton's max_batch_size)")
    api_option(trt, "--workspace-mib", ENGINE, type=int, shown="TensorRT's own", help="TensorRT workspace limit in MiB")
    api_option(trt, "--timing-cache", ENGINE, type=Path, shown="beside the engine",
               help="TensorRT timing cache file, reused across builds")
    api_option(trt, "--force", ENGINE, action="store_true", help="rebuild the engine even if an identical one exists")
    api_option(trt, "--triton-model", ENGINE, choices=TRITON_MODELS,
               help="what the Triton repository serves: an engine built here, or the ONNX file; auto: an engine "
                    "where TensorRT is installed, else the ONNX file")
    p.set_defaults(func=run)


def options(args):
    """The API's options for these arguments: (ExportOptions, EngineOptions)."""
    from tmdeploy.engines.options import EngineOptions
    from tmdeploy.export.options import ExportOptions

    return (ExportOptions(**api_values(args, ExportOptions, keep_fp32=comma_list)),
            EngineOptions(**api_values(args, EngineOptions)))


def run(args) -> int:
    from tmdeploy import deploy

    plan = deploy.plan(*options(args), args.out, args.checkpoint)  # before the (slow) checkpoint load
    deploy.write(load_checkpoint(args), plan)
    return 0
