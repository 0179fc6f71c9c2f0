"""The model registry: architectures the trainers learn and the explainer loads.

Weights travel as safetensors only; a model is always built from its registry
entry and then filled with the received tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedxai.errors import InvalidArgument


class MnistCnn(nn.Module):
    """The classic 1.2M-parameter MNIST CNN (PyTorch's MNIST example).

    Activations and pooling are modules, so a CAM can target a block's output
    after its ReLU (``relu2``); they hold no weights, so the state-dict keys are
    those of PyTorch's example.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(9216, 128)
        self.relu3 = nn.ReLU()
        self.dropout2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.dropout1(self.pool(x))
        x = self.dropout2(self.relu3(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class Cifar10Cnn(nn.Module):
    """A small CNN for 3x32x32 colour images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.fc1 = nn.Linear(64 * 8 * 8, 128)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc2(self.relu4(self.fc1(torch.flatten(x, 1))))


@dataclass(frozen=True)
class Architecture:
    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    def conv_layers(self) -> list[str]:
        return [name for name, module in self.skeleton().named_modules() if isinstance(module, nn.Conv2d)]

    def skeleton(self) -> nn.Module:
        """The module structure without weights (on the meta device), for looking at layers."""
        with torch.device("meta"):
            return self.factory()


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("mnist_cnn", MnistCnn, (1, 28, 28), 10, (0.1307,), (0.3081,)),
        Architecture(
            "cifar10_cnn",
            Cifar10Cnn,
            (3, 32, 32),
            10,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
        ),
    )
}


def get_architecture(name: str, field: str = "architecture") -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise InvalidArgument(field, f"unknown architecture {name!r} (known: {known})") from None


def build_model(arch: Architecture, state_dict: dict[str, torch.Tensor], field: str) -> nn.Module:
    """Builds ``arch`` holding exactly ``state_dict`` (strict: no missing or extra keys).

    The module is created on the meta device and the tensors are assigned, so no
    time goes into random initialisation that would be overwritten anyway.
    """
    model = arch.skeleton()
    expected = model.state_dict()
    for key, tensor in state_dict.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise InvalidArgument(
                field,
                f"weights do not fit {arch.name}: {key} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[key].shape)}",
            )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise InvalidArgument(
            field,
            f"weights do not fit {arch.name}: missing {missing or 'none'}, unexpected {unexpected or 'none'}",
        )
    state = {k: v.to(torch.float32) for k, v in state_dict.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
