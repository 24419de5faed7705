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
def tiny(tmp_path_factory):
    """tiny(arch, size=8) -> an untrained, seeded Checkpoint on 1×size×size inputs (8: the smallest the
    architectures take) whose card records digits as its training data, so accuracy and calibration data
    come from it."""
    cache = {}

    def get(arch: str, size: int = 8):
        if (arch, size) not in cache:
            torch.manual_seed(0)
            model = models.create(arch, num_classes=10, in_chans=1)
            card = checkpoint.card_for(model, [str(i) for i in range(10)], [0.3], [0.4], input_size=(1, size, size),
                                       extra={"train": {"data": "digits"}})
            path = tmp_path_factory.mktemp("tiny") / f"{arch}-{size}.pt"
            cache[(arch, size)] = checkpoint.load(checkpoint.save(path, model, card))
        return cache[(arch, size)]

    return get


@pytest.fixture(scope="session")
def big_checkpoint(tmp_path_factory):
    """rn26 with a 50,000-class head: the ONNX file is ~55 MB, so writing it takes a while to interrupt."""
    torch.manual_seed(0)
    n = 50_000
    model = models.create("rn26", num_classes=n, in_chans=1)
    card = checkpoint.card_for(model, [f"c{i}" for i in range(n)], [0.5], [0.25], input_size=(1, 16, 16))
    return checkpoint.save(tmp_path_factory.mktemp("big") / "big.pt", model, card)
