"""What every CAM method shares: capturing the target layer, one backward pass,
upsampling and normalisation. A method only says how to weigh the feature maps,
so every method's maps can be drawn from the same activations and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedxai.errors import InvalidArgument
from services.explainer.cam.layers import TargetLayers

# Added to the peak before dividing, so an all-zero map stays zero instead of
# becoming NaN; a map whose peak is at most this is flagged as degenerate.
EPS = 1e-10


@dataclass(frozen=True)
class CamResult:
    logits: torch.Tensor  # (N, classes)
    classes: torch.Tensor  # (N,) the class each map explains
    maps: torch.Tensor  # (N, h, w) raw, non-negative, at feature-map resolution
    activations: torch.Tensor  # (N, K, h, w) the target layer's output
    gradients: torch.Tensor  # (N, K, h, w) d(score of the explained class)/d(activations)


class BaseCAM:
    """Computes maps for a whole batch with one forward and one backward pass.

    The forward hook swaps the layer's output for a detached leaf that requires
    grad: the backward pass then runs only through the layers after the target
    and yields d(score)/d(activations) directly, without tensor hooks. The hook
    is removed before ``compute`` returns, also on error.
    """

    name = ""

    def __init__(self, model: nn.Module, layers: TargetLayers, layer_name: str = "") -> None:
        """``layer_name`` as a caller names it ("" for the default), resolved by ``layers``,
        the model's targetable layers."""
        self.model = model.eval().requires_grad_(False)
        self.layer_name = layers.resolve(layer_name)
        self.layer = model.get_submodule(self.layer_name)

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
        activations = activations.detach()
        with torch.no_grad():
            maps = self.cam_image(activations, gradients)
        return CamResult(
            logits=logits.detach(), classes=classes, maps=maps, activations=activations, gradients=gradients
        )

    @classmethod
    def cam_weights(cls, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Per-channel weights, shape (N, K, 1, 1). Methods that weigh channels override this."""
        raise NotImplementedError

    @classmethod
    def cam_image(cls, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(N, h, w): the weighted sum of feature maps through a ReLU."""
        return torch.relu((cls.cam_weights(activations, gradients) * activations).sum(dim=1))


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
