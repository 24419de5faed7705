"""Shared fixtures: small, seeded, really trained checkpoints on the digits data (trained once per session)."""

from __future__ import annotations

import pytest

from tmdeploy import checkpoint
from tmdeploy.train import TrainConfig, train

# 16×16 keeps every digit's detail (the originals are 8×8) at a quarter of the 32×32 cost.
IMAGE_SIZE = 16


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """trained(arch, epochs=3) -> (Checkpoint, TrainResult), cached per session."""
    cache = {}

    def get(arch: str, epochs: int = 3):
        if (arch, epochs) not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{arch}.pt"
            result = train(TrainConfig(arch=arch, epochs=epochs, image_size=IMAGE_SIZE, seed=0), out=path,
                           show_progress=False)
            cache[arch, epochs] = (checkpoint.load(path), result)
        return cache[arch, epochs]

    return get
