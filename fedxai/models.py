"""The model registry: architectures the trainers learn and the explainer loads.

Two are built in; installed packages add their own through the entry-point group
``fedxai.architectures`` (see ``examples/fedxai-example-plugin``). Every one is checked
when the registry is first read, so a broken plugin stops a command at its start.
Weights travel as safetensors only; a model is always built from its registry
entry and then filled with the received tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import torch
from torch import nn

from fedxai.errors import InvalidArgument
from fedxai.plugins import PluginError, load_plugin, plugin_label, registry

ARCHITECTURE_PLUGINS = "fedxai.architectures"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


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
    """A network the federation can learn and the explainer can load; what a plugin exports."""

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    mean: tuple[float, ...]  # per channel, for inputs in [0, 1]
    std: tuple[float, ...]
    # What a person reads for each label ("Trouser" rather than "1"); empty: the label itself.
    class_names: tuple[str, ...] = ()
    # The layer Grad-CAM looks at by default, where the automatic choice (the last
    # convolution's output after its activation) is not the right one.
    target_layer: str = ""
    # The distribution that installed it ("name version"); empty for the built-in ones.
    provided_by: str = ""

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    def class_name(self, label: int) -> str:
        return self.class_names[label] if self.class_names else str(label)

    def conv_layers(self) -> list[str]:
        return [name for name, module in self.skeleton().named_modules() if isinstance(module, nn.Conv2d)]

    def skeleton(self) -> nn.Module:
        """The module structure without weights (on the meta device), for looking at layers."""
        with torch.device("meta"):
            return self.factory()


MNIST_CNN = Architecture("mnist_cnn", MnistCnn, (1, 28, 28), 10, (0.1307,), (0.3081,))
BUILT_IN = (
    MNIST_CNN,
    Architecture(
        "cifar10_cnn",
        Cifar10Cnn,
        (3, 32, 32),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
)


@functools.cache
def architectures() -> Mapping[str, Architecture]:
    """The built-in architectures and every installed plugin's, by name; raises
    PluginError for the first plugin that cannot be used."""
    return registry(BUILT_IN, ARCHITECTURE_PLUGINS, "architecture", _plugin)


def _plugin(entry: EntryPoint) -> Architecture:
    arch, provider = load_plugin(entry, "architecture", Architecture)
    problems = _architecture_problems(arch)
    if problems:
        raise PluginError(f"{plugin_label('architecture', entry)}: " + "; ".join(problems))
    return dataclasses.replace(arch, provided_by=provider)


def _architecture_problems(arch: Architecture) -> list[str]:
    """What makes ``arch`` unusable, checked by building it and running a zero input through it."""
    if not _NAME.fullmatch(arch.name):
        return [f"name {arch.name!r} must be 1 to 63 lowercase letters, digits or '_', starting with a letter"]
    shape = tuple(arch.input_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
        return [f"input_shape {shape!r} must be three positive integers (C, H, W)"]
    problems = []
    if arch.num_classes < 2:
        problems.append(f"num_classes is {arch.num_classes}; at least 2")
    if len(arch.mean) != arch.channels or len(arch.std) != arch.channels:
        problems.append(f"mean and std need one value per channel ({arch.channels})")
    if any(value <= 0 for value in arch.std):
        problems.append("std values must be positive")
    names = arch.class_names
    if names and (len(names) != arch.num_classes or len(set(names)) != len(names) or not all(names)):
        problems.append(f"class_names must be {arch.num_classes} distinct, non-empty names")
    if problems:
        return problems
    try:
        model = arch.factory()
        if not isinstance(model, nn.Module):
            return [f"factory() returned a {type(model).__name__}, not a torch.nn.Module"]
        with torch.no_grad():
            output = model.eval()(torch.zeros(1, *shape))
    except Exception as error:  # the plugin's own code: reported, not raised
        return [f"building it and running a zero input of shape {shape} fails: {type(error).__name__}: {error}"]
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, arch.num_classes):
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        problems.append(f"its output for one input is {got}, expected (1, {arch.num_classes})")
    return problems


def get_architecture(name: str, field: str = "architecture") -> Architecture:
    known = architectures()
    try:
        return known[name]
    except KeyError:
        raise InvalidArgument(field, f"unknown architecture {name!r} (known: {', '.join(sorted(known))})") from None


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
