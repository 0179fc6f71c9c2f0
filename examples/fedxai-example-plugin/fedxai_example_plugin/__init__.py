"""A FedXAI architecture plugin: a small network for 3x28x28 colour images.

Its layers are not named ``conv*`` and sit inside ``nn.Sequential`` blocks, and its
activations are modules, so Grad-CAM can be hooked after them: the automatic target
layer is the last convolution's output after its ReLU (``features.4``).
"""

from __future__ import annotations

import torch
from torch import nn

from fedxai.models import Architecture

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class TinyRgbNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.MaxPool2d(2),  # 7x7
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


TINY_RGB_NET = Architecture(
    name="tiny_rgb_net",
    factory=TinyRgbNet,
    input_shape=(3, 28, 28),
    num_classes=10,
    mean=(0.286, 0.286, 0.286),
    std=(0.353, 0.353, 0.353),
    class_names=FASHION_MNIST_CLASSES,
)
