"""HiResCAM (Draelos & Carin, 2020): gradients times activations, element-wise."""

import torch

from services.explainer.cam.base import BaseCAM


class HiResCAM(BaseCAM):
    name = "HiResCAM"

    @classmethod
    def cam_image(cls, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return torch.relu((gradients * activations).sum(dim=1))
