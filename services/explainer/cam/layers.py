"""Where a CAM can look: the layers of a model whose output is a feature map a
person can read, found by tracing the model's forward pass.

Grad-CAM needs the feature maps the rest of the network actually sees. The
output of a convolution that a ReLU follows is not that: its negative values
are switched off downstream, and once the model is confident Grad-CAM's
weighted sum of them is negative everywhere, i.e. the map is blank. So:

- a layer whose output goes straight into an activation module is explained
  after it (``conv2`` is explained at ``relu2``);
- a layer whose output goes into an activation applied in ``forward`` as a
  function (``torch.relu(self.conv2(x))``) cannot be hooked after it and is
  refused with a message that says why;
- the default is the last convolution's output after its activation, unless the
  architecture names its own (``Architecture.target_layer``, for plugins).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from fedxai.errors import InvalidArgument
from fedxai.models import Architecture

ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Softplus,
    nn.Sigmoid,
    nn.Tanh,
)
# Activations as functions or tensor methods (torch.relu, F.gelu, x.relu(), ...), by name.
ACTIVATION_FUNCTIONS = frozenset(
    {"relu", "relu_", "relu6", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "mish", "hardswish"}
    | {"softplus", "sigmoid", "tanh"}
)
# Identity at inference: targeting them shows the same maps as the layer before.
_PASS_THROUGH: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


@dataclass(frozen=True)
class TargetLayers:
    """The targetable layers of one architecture, in forward order."""

    names: tuple[str, ...]  # modules whose output is a 4-D feature map that no activation follows
    default: str  # the last convolution's output after its activation
    explained_after: dict[str, str]  # a layer an activation module follows -> that activation
    functional_after: dict[str, str]  # a layer an activation function follows -> the function's name
    forward_order: tuple[str, ...]  # every module called, in forward order
    parameterised: frozenset[str]  # modules holding weights of their own

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...]) -> TargetLayers:
        """Traces ``model`` (better built on the meta device: nothing is computed)."""
        graph_module = torch.fx.symbolic_trace(model)
        device = next(model.parameters()).device
        ShapeProp(graph_module).propagate(torch.empty(1, *input_shape, device=device))
        modules = dict(model.named_modules())
        names: list[str] = []
        explained_after: dict[str, str] = {}
        functional_after: dict[str, str] = {}
        order: list[str] = []
        parameterised: set[str] = set()
        convolutions: list[str] = []
        for node in graph_module.graph.nodes:
            if node.op != "call_module":
                continue
            name = str(node.target)
            module = modules[name]
            order.append(name)
            if any(True for _ in module.parameters(recurse=False)):
                parameterised.add(name)
            if isinstance(module, nn.Conv2d):
                convolutions.append(name)
            meta = node.meta.get("tensor_meta")
            if meta is None or not hasattr(meta, "shape") or len(meta.shape) != 4 or isinstance(module, _PASS_THROUGH):
                continue
            users = list(node.users)
            activation = next((str(u.target) for u in users if _is_activation_module(u, modules)), None)
            function = next((_function_name(u) for u in users if _function_name(u) in ACTIVATION_FUNCTIONS), None)
            if function is not None:
                functional_after[name] = function
            elif activation is not None and len(users) == 1:
                explained_after[name] = activation
            else:
                names.append(name)
        if not convolutions:
            raise InvalidArgument("target_layer", f"{type(model).__name__} has no convolution layer")
        last = convolutions[-1]
        if last in functional_after:
            raise InvalidArgument(
                "target_layer",
                f"{type(model).__name__}: the last convolution {last!r} goes through {functional_after[last]} "
                "applied in forward(); make the activation a module so its output can be explained",
            )
        return cls(
            names=tuple(names),
            default=explained_after.get(last, last),
            explained_after=explained_after,
            functional_after=functional_after,
            forward_order=tuple(order),
            parameterised=frozenset(parameterised),
        )

    def resolve(self, requested: str) -> str:
        """The layer a request for ``requested`` is explained at ("" for the default)."""
        if not requested:
            return self.default
        if requested in self.explained_after:
            return self.explained_after[requested]
        if requested in self.functional_after:
            raise InvalidArgument(
                "target_layer",
                f"{requested!r} goes through {self.functional_after[requested]} applied in forward(), outside any "
                "module: its output before the activation gives blank maps once the model is confident, and the "
                f"activation cannot be hooked; targetable layers: {', '.join(self.names)}",
            )
        if requested not in self.names:
            raise InvalidArgument(
                "target_layer", f"no targetable layer {requested!r} (targetable: {', '.join(self.names)})"
            )
        return requested

    def randomisation_cascade(self, layer: str) -> tuple[str, ...]:
        """The weighted layers a sanity check re-initialises, from the output down to
        the one that computes ``layer``'s feature maps (Adebayo et al., 2018)."""
        position = self.forward_order.index(layer)
        weighted = [name for name in self.forward_order if name in self.parameterised]
        before = [name for name in weighted if self.forward_order.index(name) < position]
        after = [name for name in weighted if self.forward_order.index(name) >= position]
        # A target without weights (an activation, a pooling) is computed by the last weighted layer before it.
        producer = [] if layer in self.parameterised else before[-1:]
        return tuple(reversed(producer + after))


@functools.cache
def target_layers(arch: Architecture) -> TargetLayers:
    """An architecture's targetable layers, traced once; its own default layer where it names one."""
    layers = TargetLayers.of(arch.skeleton(), arch.input_shape)
    if arch.target_layer:
        layers = dataclasses.replace(layers, default=layers.resolve(arch.target_layer))
    return layers


def _is_activation_module(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[str(node.target)], ACTIVATION_MODULES)


def _function_name(node: torch.fx.Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", "")
    if node.op == "call_method":
        return str(node.target)
    return ""
