"""`tmdeploy info`: what an ONNX file says about itself — metadata, inputs/outputs, ops, parameters."""

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("info", help="show an ONNX file's metadata, inputs and outputs, op histogram, parameters")
    p.add_argument("onnx", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def describe(path: Path) -> dict:
    import onnx

    from tmdeploy import onnxfile
    from tmdeploy.errors import TmdeployError
    from tmdeploy.export import graph, metadata

    model = onnxfile.load(path)  # without external tensor data: shapes and counts come from the protobuf

    def tensor(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        kind = v.type.WhichOneof("value")
        if kind != "tensor_type":  # a sequence, map or optional input: any ONNX file may have one
            dtype = kind or "undefined"
        else:
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            except (KeyError, ValueError, TypeError):  # undefined or unknown element type
                dtype = f"elem_type {t.elem_type}"
        return {"name": v.name, "dtype": dtype, "shape": dims}

    props = metadata.props(model)
    try:
        meta = metadata.ModelMetadata.from_props(props)
        tmdeploy_meta, note = vars(meta), None
    except TmdeployError as err:
        tmdeploy_meta, note = None, str(err)
    return {
        "path": str(path), "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [tensor(v) for v in model.graph.input], "outputs": [tensor(v) for v in model.graph.output],
        "ops": graph.op_histogram(model), "parameters": graph.parameter_count(model),
        "tmdeploy": tmdeploy_meta, "metadata_props": props, "note": note, "int8_safe_on": _int8_safe_on(model, path),
    }


def _int8_safe_on(model, path: Path) -> str | None:
    """Where onnxruntime computes the file's integer convolutions exactly, read off its weights (so files
    without tmdeploy's metadata get it too); None for a file without any."""
    from tmdeploy.export import int8_saturation

    try:
        sums = int8_saturation.pair_sums(model, path.parent)
        return int8_saturation.exact_on(sums) if sums else None
    except (ValueError, OSError) as err:  # weights that do not match their declared shape, unreadable data
        return f"unknown: the INT8 weights cannot be read ({type(err).__name__})"


def run(args) -> int:
    import json

    info = describe(args.onnx)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tmdeploy.sanitize import clean

    def show(value) -> str:
        """Everything shown comes from the file: control characters escaped, and "[/x]" not read as markup."""
        return escape(clean(value))

    console = Console()
    console.print(f"[bold]{show(info['path'])}[/bold]  opset {show(info['opset'])}  "
                  f"producer {show(info['producer'] or '?')}  parameters {info['parameters']:,}")
    io = Table("", "name", "dtype", "shape", title="inputs and outputs")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            io.add_row(kind[:-1], show(t["name"]), show(t["dtype"]), show(t["shape"]))
    console.print(io)
    meta = Table("key", "value", title="tmdeploy metadata" if info["tmdeploy"] else "metadata_props")
    for key, value in (info["tmdeploy"] or info["metadata_props"]).items():
        meta.add_row(show(key), show(value))
    console.print(meta)
    if info["int8_safe_on"]:
        console.print(f"INT8 integer arithmetic exact on: {show(info['int8_safe_on'])}")
    if info["note"]:
        console.print(f"note: {show(info['note'])}")
    ops = Table("op", "count", title="op histogram")
    for op, n in info["ops"].items():
        ops.add_row(show(op), str(n))
    console.print(ops)
    return 0
