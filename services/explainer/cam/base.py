"""What every CAM method shares: capturing the target layer, one backward pass,
upsampling and normalisation. A method only says how to weigh the feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedxai.errors import InvalidArgument

# Added to the peak before dividing, so an all-zero map stays zero instead of
# becoming NaN; a map whose peak is at most this is flagged as degenerate.
EPS = 1e-10


@dataclass(frozen=True)
class CamResult:
    logits: torch.Tensor  # (N, classes)
    classes: torch.Tensor  # (N,) the class each map explains
    maps: torch.Tensor  # (N, h, w) raw, non-negative, at feature-map resolution


def find_last_conv(model: nn.Module) -> str:
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise InvalidArgument("target_layer", "the model has no convolution layer; name one")
    return names[-1]


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The named module, or the last convolution layer when ``name`` is empty."""
    name = name or find_last_conv(model)
    modules = dict(model.named_modules())
    if not name or name not in modules:
        candidates = ", ".join(n for n, m in modules.items() if isinstance(m, nn.Conv2d))
        raise InvalidArgument("target_layer", f"no layer {name!r} in the model (conv layers: {candidates})")
    return name, modules[name]


class BaseCAM:
    """Computes maps for a whole batch with one forward and one backward pass.

    The forward hook swaps the layer's output for a detached leaf that requires
    grad: the backward pass then runs only through the layers after the target
    and yields d(score)/d(activations) directly, without tensor hooks. The hook
    is removed before ``compute`` returns, also on error.
    """

    name = ""

    def __init__(self, model: nn.Module, layer_name: str = "") -> None:
        self.model = model.eval().requires_grad_(False)
        self.layer_name, self.layer = resolve_layer(model, layer_name)

    def compute(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> CamResult:
        """Maps for ``targets`` (one class per sample), or the predicted classes when None."""
        captured: list[torch.Tensor] = []

        def capture(_module: nn.Module, _args: object, output: object) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise InvalidArgument(
                    "target_layer", f"layer {self.layer_name!r} outputs {shape}, not a 4-D feature map"
                )
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf

        handle = self.layer.register_forward_hook(capture)
        try:
            with torch.enable_grad():
                logits = self.model(inputs)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise InvalidArgument(
                "target_layer",
                f"layer {self.layer_name!r} ran {len(captured)} times in the forward pass; need once",
            )
        activations = captured[0]
        classes = logits.detach().argmax(dim=1) if targets is None else targets
        score = logits.gather(1, classes[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, activations)
        with torch.no_grad():
            maps = self.cam_image(activations.detach(), gradients)
        return CamResult(logits=logits.detach(), classes=classes, maps=maps)

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Per-channel weights, shape (N, K, 1, 1). Methods that weigh channels override this."""
        raise NotImplementedError

    def cam_image(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(N, h, w): the weighted sum of feature maps through a ReLU."""
        return torch.relu((self.cam_weights(activations, gradients) * activations).sum(dim=1))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, h, w) maps to the input size."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scales each map by its own peak into [0, 1].

    Dividing by the maximum (not max - min) keeps zero meaning "no evidence";
    the raw statistics are reported beside the images so rounds stay
    comparable. The epsilon keeps an all-zero map at zero instead of NaN.
    """
    return maps / (maps.amax(dim=(1, 2), keepdim=True) + EPS)
