"""LayerCAM (Jiang et al., 2021): positive gradients times activations, per location."""

import torch

from services.explainer.cam.base import BaseCAM


class LayerCAM(BaseCAM):
    name = "LayerCAM"

    @classmethod
    def cam_image(cls, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return torch.relu((torch.relu(gradients) * activations).sum(dim=1))
