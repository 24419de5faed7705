"""`tmdeploy train`: seeded training on a named data source, ending in a checkpoint."""

from pathlib import Path

from tmdeploy.cli._common import api_option, api_values

TRAIN = "tmdeploy.train:TrainConfig"


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a deployable checkpoint")
    api_option(p, "--arch", TRAIN, help="architecture (see `tmdeploy models`)")
    api_option(p, "--data", TRAIN, help="digits | cifar10:DIR | cifar100:DIR | folder:DIR")
    api_option(p, "--epochs", TRAIN, type=int, help="passes over the training split")
    api_option(p, "--batch-size", TRAIN, type=int, help="images per optimizer step")
    api_option(p, "--lr", TRAIN, type=float, help="AdamW's peak learning rate, reached after the warm-up")
    api_option(p, "--warmup-epochs", TRAIN, type=float, help="linear warm-up before the cosine decay")
    api_option(p, "--weight-decay", TRAIN, type=float, help="AdamW's decoupled weight decay (weights only)")
    api_option(p, "--label-smoothing", TRAIN, type=float,
               help="ε of every cross-entropy term: the label's target is 1−ε, the rest spread evenly")
    api_option(p, "--aux-weight", TRAIN, type=float,
               help="λ of the auxiliary per-patch loss (docs/models.md, class-semantic block)")
    api_option(p, "--image-size", TRAIN, type=int, shown="the data's own (digits 16, else 32)",
               help="square input size the images are resized to")
    api_option(p, "--in-chans", TRAIN, type=int, shown="the data's own", help="input channels")
    api_option(p, "--seed", TRAIN, type=int, help="seed of the weights, the data order and the split")
    p.add_argument("--out", type=Path, default=Path("ckpt.pt"), help="checkpoint path, .pt or .safetensors "
                   "(default: ckpt.pt)")
    p.set_defaults(func=run)


def options(args):
    from tmdeploy.train import TrainConfig

    return TrainConfig(**api_values(args, TrainConfig))


def run(args) -> int:
    from tmdeploy.fileio import check_output
    from tmdeploy.train import train

    config = options(args)
    config.validate()
    check_output(args.out, option="--out")  # before training, not after it
    result = train(config, out=args.out)
    print(f"wrote {args.out}: {config.arch}, held-out top-1 {result.accuracy:.2%}")
    return 0
