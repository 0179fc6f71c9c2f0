"""XGrad-CAM (Fu et al., 2020): gradients weighted by normalised activations."""

import torch

from services.explainer.cam.base import BaseCAM

_EPS = 1e-7


class XGradCAM(BaseCAM):
    name = "XGrad-CAM"

    @classmethod
    def cam_weights(cls, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        sum_activations = activations.sum(dim=(2, 3), keepdim=True)
        return (gradients * activations).sum(dim=(2, 3), keepdim=True) / (sum_activations + _EPS)
