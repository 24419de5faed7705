"""`tmdeploy demo`: train, export, check and benchmark a model on the built-in digits data."""

from pathlib import Path

from tmdeploy.cli._common import api_option

DEMO = "tmdeploy.demo:run_demo"


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on built-in digits data and summarize")
    p.add_argument("--out-dir", type=Path, default=Path("runs/demo"), help="where to write (default: runs/demo)")
    api_option(p, "--arch", DEMO, help="architecture to train")
    api_option(p, "--epochs", DEMO, type=int, help="training epochs")
    api_option(p, "--image-size", DEMO, type=int, help="digits are 8×8; 16 loses nothing")
    api_option(p, "--seed", DEMO, type=int, help="seed of training and data split")
    p.set_defaults(func=run)


def options(args) -> dict:
    """run_demo's keyword arguments given on the command line."""
    return {name: getattr(args, name) for name in ("arch", "epochs", "image_size", "seed")
            if getattr(args, name) is not None}


def run(args) -> int:
    from tmdeploy.demo import format_summary, run_demo

    summary = run_demo(args.out_dir, **options(args))
    print(format_summary(summary))
    return 0 if summary["passed"] else 1
