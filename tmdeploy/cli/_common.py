"""Arguments and loaders shared by several commands."""

from __future__ import annotations

from pathlib import Path

from tmdeploy.errors import UsageError


def add_checkpoint_args(p) -> None:
    p.add_argument("checkpoint", type=Path, help="checkpoint (.pt or .safetensors) written by tmdeploy train")
    p.add_argument("--arch", default=None, help="architecture of a bare state_dict (no tmdeploy metadata)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of a bare state_dict")
    p.add_argument("--in-chans", type=int, default=None, help="input channels of a bare state_dict")


def load_checkpoint(args):
    from tmdeploy import checkpoint

    return checkpoint.load(args.checkpoint, arch=args.arch, num_classes=args.num_classes, in_chans=args.in_chans)


def int_list(text: str, option: str) -> tuple[int, ...]:
    """Parse "1,32,256" into integers, or say which option was malformed."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{option} takes positive integers, got '{text}'")
    return values
