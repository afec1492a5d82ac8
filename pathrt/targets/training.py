"""Training a target classifier (`pathrt train-target`): the embedded default's small VGG, or any
known architecture on a user's data. Seeded; AdamW with a cosine schedule and random shifts."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pathrt.data import TensorImageDataset
from pathrt.errors import InputError
from pathrt.progress import progress_bar
from pathrt.targets.target import Target, create_target, save_target


@dataclass
class TargetTrainingConfig:
    """Hyperparameters of target training; saved in the target's sidecar."""

    arch: str = "small_vgg"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    shift: int = 2  # random translation by up to `shift` pixels (augmentation)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.shift < 0:
            raise InputError(f"invalid target training config {self}: epochs and batch_size must be >= 1, "
                             "lr > 0, shift >= 0")


def _random_shift(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    if shift == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


@torch.no_grad()
def evaluate_accuracy(target: Target, dataset: TensorImageDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) of `target` on `dataset` (images in [0, 1])."""
    target.model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start:start + batch_size]
        logits = target.model(target.preprocess(images))
        correct += int((logits.argmax(1) == dataset.labels[start:start + batch_size]).sum())
    return correct / max(1, len(dataset))


@torch.enable_grad()
def train_target(
    train: TensorImageDataset,
    test: TensorImageDataset,
    config: TargetTrainingConfig | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **arch_kwargs: Any,
) -> Target:
    """Trains a target of `config.arch` on `train`, reports accuracy on `test`, saves it to `out`.

    Normalization (mean, std) is measured on `train` and stored with the target.
    """
    config = config or TargetTrainingConfig()
    if train.classes != test.classes:
        raise InputError("train and test data sets name different classes")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    mean, std = train.channel_stats()
    target = create_target(config.arch, train.classes, train.image_shape, mean=mean, std=std, **arch_kwargs)
    model = target.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    start = time.perf_counter()
    bar = progress_bar(total, f"train-target {config.arch}", progress, unit="step")
    try:
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            running, seen = 0.0, 0
            for i in range(steps_per_epoch):
                idx = order[i * config.batch_size:(i + 1) * config.batch_size]
                images = _random_shift(train.images[idx], config.shift, generator)
                loss = F.cross_entropy(model(target.preprocess(images)), train.labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += loss.item() * len(idx)
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.3f}")
    finally:
        bar.close()
        model.eval()
    target.info = {
        "dataset": train.name,
        "train_size": len(train),
        "test_size": len(test),
        "test_accuracy": evaluate_accuracy(target, test),
        "train_seconds": round(time.perf_counter() - start, 1),
        "training": asdict(config),
    }
    target.measure_channel_means(target.preprocess(train.images))  # mean ablation's fill values
    if out is not None:
        save_target(target, out)
    return target
