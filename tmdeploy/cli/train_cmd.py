"""`tmdeploy train`: seeded training on a named data source, ending in a checkpoint."""

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a deployable checkpoint")
    p.add_argument("--arch", default="rn26-cls", help="architecture (see `tmdeploy models`)")
    p.add_argument("--data", default="digits", help="digits | cifar10:DIR | cifar100:DIR | folder:DIR")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate of the cosine schedule")
    p.add_argument("--aux-weight", type=float, default=0.3, help="λ of the auxiliary per-patch loss (SPEC §2)")
    p.add_argument("--image-size", type=int, default=32, help="square input size the images are resized to")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default: the data's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("ckpt.pt"), help="checkpoint path (.pt or .safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tmdeploy.fileio import check_output
    from tmdeploy.train import TrainConfig, train

    config = TrainConfig(
        arch=args.arch, data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        aux_weight=args.aux_weight, image_size=args.image_size, in_chans=args.in_chans, seed=args.seed,
    )
    config.validate()
    check_output(args.out, option="--out")  # before training, not after it
    result = train(config, out=args.out)
    print(f"wrote {args.out}: {config.arch}, held-out top-1 {result.accuracy:.2%}")
    return 0
