"""Grad-CAM (Selvaraju et al., 2017): channels weighted by their mean gradient."""

import torch

from services.explainer.cam.base import BaseCAM


class GradCAM(BaseCAM):
    name = "Grad-CAM"

    @classmethod
    def cam_weights(cls, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3), keepdim=True)
