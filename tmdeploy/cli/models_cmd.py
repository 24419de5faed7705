"""`tmdeploy models`: the registered architectures and their parameter counts."""


def register(sub) -> None:
    p = sub.add_parser("models", help="list the architectures with their parameter counts")
    p.add_argument("--num-classes", type=int, default=10, help="classes to count the head for (default 10)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (default 3)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from tmdeploy import models
    from tmdeploy.values import MAX_CHANNELS, MAX_CLASSES, check_option

    check_option("--num-classes", args.num_classes, 1, MAX_CLASSES)
    check_option("--in-chans", args.in_chans, 1, MAX_CHANNELS)

    table = Table(title=f"tmdeploy architectures ({args.num_classes} classes, {args.in_chans} input channels)")
    for column in ("name", "parameters", "batch statistics", "per-patch logits"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for name in models.list_models():
        model = models.create(name, num_classes=args.num_classes, in_chans=args.in_chans)
        params = sum(p.numel() for p in model.parameters())
        has_bn = any("BatchNorm" in type(m).__name__ for m in model.modules())
        table.add_row(name, f"{params:,}", "BatchNorm" if has_bn else "none", "yes" if model.has_patch_logits else "")
    Console().print(table)
    return 0
