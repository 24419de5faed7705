"""Seeded training that ends in a deployable checkpoint: SGD, cosine schedule, auxiliary per-patch loss."""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset

from tmdeploy import checkpoint, data, models
from tmdeploy.errors import UsageError
from tmdeploy.models.losses import auxiliary_loss


@dataclass
class TrainConfig:
    arch: str = "rn26-cls"
    data: str = "digits"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aux_weight: float = 0.3  # λ in SPEC §2; used only by models with per-patch logits
    image_size: int = 32
    in_chans: int | None = None  # default: the data's own channels
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.aux_weight < 1.0:
            raise UsageError(f"--aux-weight must be in [0, 1), got {self.aux_weight}")
        if self.image_size < 8:
            raise UsageError(f"--image-size must be at least 8, got {self.image_size}")
        if self.arch not in models.list_models():
            raise UsageError(f"unknown architecture '{self.arch}'; choose one of: {', '.join(models.list_models())}")


@dataclass
class TrainResult:
    model: torch.nn.Module
    card: checkpoint.ModelCard
    history: list[dict]

    @property
    def accuracy(self) -> float:
        return self.history[-1]["test_accuracy"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, mean, std, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``dataset``, normalizing with the card's mean/std."""
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        logits = model(data.normalize(images, mean, std))
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def train(config: TrainConfig, out: Path | None = None, show_progress: bool = True) -> TrainResult:
    """Train ``config.arch`` on ``config.data``; write the checkpoint to ``out`` when given."""
    config.validate()
    seed_everything(config.seed)
    split = data.load(config.data, image_size=config.image_size, in_chans=config.in_chans, seed=config.seed)
    model = models.create(config.arch, num_classes=len(split.class_names), in_chans=split.in_chans)
    loader = DataLoader(
        split.train, batch_size=config.batch_size, shuffle=True, drop_last=len(split.train) > config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
    )
    steps = config.epochs * len(loader)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    aux = config.aux_weight if model.has_patch_logits else 0.0
    history = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        for epoch in range(1, config.epochs + 1):
            task = progress.add_task(f"epoch {epoch}/{config.epochs}", total=len(loader), status="")
            model.train()
            start, seen, loss_sum = time.perf_counter(), 0, 0.0
            for images, labels in loader:
                logits, patch_logits = model.forward_with_patch_logits(data.normalize(images, split.mean, split.std))
                loss = auxiliary_loss(logits, patch_logits if aux else None, labels, aux)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                seen += len(labels)
                loss_sum += float(loss.detach()) * len(labels)
                progress.update(task, advance=1, status=f"loss {loss_sum / seen:.4f}")
            accuracy = evaluate(model, split.test, split.mean, split.std)
            record = {"epoch": epoch, "train_loss": loss_sum / seen, "test_accuracy": accuracy,
                      "seconds": time.perf_counter() - start}
            history.append(record)
            progress.update(task, status=f"loss {record['train_loss']:.4f}  held-out top-1 {accuracy:.2%}")
    model.eval()
    card = checkpoint.card_for(
        model, split.class_names, split.mean, split.std,
        input_size=(split.in_chans, config.image_size, config.image_size),
        extra={"train": asdict(config), "history": history, "test_accuracy": history[-1]["test_accuracy"]},
    )
    if out is not None:
        checkpoint.save(out, model, card)
    return TrainResult(model, card, history)
