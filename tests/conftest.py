"""Shared fixtures: seeded checkpoints really trained on the digits data with the default recipe (once per session)."""

from __future__ import annotations

import pytest
import torch

from tmdeploy import checkpoint, models
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


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory):
    """seeded_checkpoint(arch, size) -> an untrained, seeded checkpoint for 1×size×size digits-like inputs.

    Its card names digits as its training data, so bench's and check's default data is read from it.
    """

    def make(arch: str, size: int):
        torch.manual_seed(0)
        model = models.create(arch, num_classes=10, in_chans=1)
        card = checkpoint.card_for(model, [str(i) for i in range(10)], [0.3], [0.4], input_size=(1, size, size),
                                   extra={"train": {"data": "digits"}})
        return checkpoint.load(checkpoint.save(tmp_path_factory.mktemp(arch) / f"{arch}.pt", model, card))

    return make
