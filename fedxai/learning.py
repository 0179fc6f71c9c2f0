"""Plain PyTorch training and evaluation, shared by the trainers and the aggregator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedxai.data import Dataset
from fedxai.models import Architecture


@dataclass(frozen=True)
class Scores:
    loss: float
    accuracy: float
    examples: int


def to_inputs(images: np.ndarray, arch: Architecture) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) uint8 pixels as normalised float32 NCHW."""
    pixels = torch.from_numpy(images).float().div_(255.0)
    if pixels.dim() == 3:
        pixels = pixels[:, None]
    mean = torch.tensor(arch.mean)[None, :, None, None]
    std = torch.tensor(arch.std)[None, :, None, None]
    return (pixels - mean) / std


def train(
    model: nn.Module,
    data: Dataset,
    arch: Architecture,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    optimizer_name: str,
    seed: int,
) -> Scores:
    """Local epochs of SGD (momentum 0.9) or Adam; returns the mean loss and accuracy seen."""
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = to_inputs(data.images, arch), torch.from_numpy(data.labels)
    if optimizer_name == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            logits = model(inputs[batch])
            loss = F.cross_entropy(logits, targets[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == targets[batch]).sum())
            seen += len(batch)
    model.eval()
    return Scores(loss=total_loss / seen, accuracy=correct / seen, examples=len(targets))


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, arch: Architecture, batch_size: int = 512) -> Scores:
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        inputs = to_inputs(data.images[start : start + batch_size], arch)
        targets = torch.from_numpy(data.labels[start : start + batch_size])
        logits = model(inputs)
        total_loss += float(F.cross_entropy(logits, targets, reduction="sum"))
        correct += int((logits.argmax(dim=1) == targets).sum())
    return Scores(loss=total_loss / len(data), accuracy=correct / len(data), examples=len(data))
