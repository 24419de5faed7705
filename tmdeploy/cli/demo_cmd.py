"""`tmdeploy demo`: train, export, check and benchmark a model on the built-in digits data."""

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on built-in digits data and summarize")
    p.add_argument("--out-dir", type=Path, default=Path("runs/demo"), help="where to write (default runs/demo)")
    p.add_argument("--arch", default=None, help="architecture (default: train's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: train's)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: train's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tmdeploy.demo import format_summary, run_demo
    from tmdeploy.train import TrainConfig

    given = {k: v for k, v in (("arch", args.arch), ("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    summary = run_demo(args.out_dir, TrainConfig(data="digits", **given))
    print(format_summary(summary))
    return 0 if summary["passed"] else 1
