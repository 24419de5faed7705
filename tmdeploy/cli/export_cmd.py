"""`tmdeploy export`: checkpoint → ONNX (and, as asked, a TensorRT engine or a Triton repository)."""

from pathlib import Path

from tmdeploy.cli._common import add_checkpoint_args, load_checkpoint

FORMATS = ("onnx", "trt", "triton")


def register(sub) -> None:
    from tmdeploy.export.forms import DEFAULT_FORM, FORMS
    from tmdeploy.export.to_onnx import DEFAULT_OPSET

    p = sub.add_parser("export", help="export a checkpoint to ONNX, TensorRT or a Triton model repository")
    add_checkpoint_args(p)
    p.add_argument("--format", default="onnx", help=f"{' | '.join(FORMATS)} (default onnx)")
    p.add_argument("--out", type=Path, default=None, help="output path (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, at least 13 (default {DEFAULT_OPSET})")
    p.add_argument("--tm-form", default=DEFAULT_FORM, help=f"template-matching export form: {' | '.join(FORMS)}")
    p.add_argument("--patch-logits", action="store_true", help="add the per-patch class map as a second output")
    p.add_argument("--bake-preprocess", action="store_true",
                   help="graph takes uint8 N×H×W×C pixels and scales/normalizes inside")
    p.set_defaults(func=run)


def run(args) -> int:
    from tmdeploy.errors import UsageError
    from tmdeploy.export import ExportOptions, export_onnx

    if args.format not in FORMATS:
        raise UsageError(f"unknown --format '{args.format}'; choose one of: {', '.join(FORMATS)}")
    options = ExportOptions(opset=args.opset, tm_form=args.tm_form, patch_logits=args.patch_logits,
                            bake_preprocess=args.bake_preprocess)
    options.validate()  # before the (slow) checkpoint load, so a bad option fails at once
    ckpt = load_checkpoint(args)
    onnx_out = args.out if args.format == "onnx" else None
    path = export_onnx(ckpt, onnx_out, options)
    print(f"wrote {path}")
    return 0
