"""Shared fixtures: seeded checkpoints really trained on the digits data with the default recipe (once per session)."""

from __future__ import annotations

import pytest

from tmdeploy import checkpoint
from tmdeploy.train import TrainConfig, train


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """trained(arch) -> (Checkpoint, TrainResult) with ``TrainConfig(arch=arch)``: what `tmdeploy train` does."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{arch}.pt"
            result = train(TrainConfig(arch=arch), out=path, show_progress=False)
            cache[arch] = (checkpoint.load(path), result)
        return cache[arch]

    return get
