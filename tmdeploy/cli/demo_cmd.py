"""`tmdeploy demo`: train, export, check and benchmark a model on the built-in digits data."""

from pathlib import Path

from tmdeploy.cli._common import api_option, api_values

TRAIN = "tmdeploy.train:TrainConfig"


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on built-in digits data and summarize")
    p.add_argument("--out-dir", type=Path, default=Path("runs/demo"), help="where to write (default: runs/demo)")
    api_option(p, "--arch", TRAIN, help="architecture to train")
    api_option(p, "--epochs", TRAIN, type=int, help="training epochs")
    api_option(p, "--seed", TRAIN, type=int, help="seed of training and data split")
    p.set_defaults(func=run)


def options(args):
    """The training the demo runs: `tmdeploy train`'s, on digits."""
    from tmdeploy.train import TrainConfig

    return TrainConfig(**{**api_values(args, TrainConfig), "data": "digits"})


def run(args) -> int:
    from tmdeploy.demo import format_summary, run_demo

    summary = run_demo(args.out_dir, options(args))
    print(format_summary(summary))
    return 0 if summary["passed"] else 1
