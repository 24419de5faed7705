"""`tmdeploy demo`: train, export, check and benchmark a model on the built-in digits data."""

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on built-in digits data and summarize")
    p.add_argument("--out-dir", type=Path, default=Path("runs/demo"), help="where to write (default runs/demo)")
    p.add_argument("--arch", default="rn26-cls")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=16, help="digits are 8×8; 16 loses nothing (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from tmdeploy.demo import format_summary, run_demo

    summary = run_demo(args.out_dir, arch=args.arch, epochs=args.epochs, image_size=args.image_size, seed=args.seed)
    print(format_summary(summary))
    return 0 if summary["passed"] else 1
