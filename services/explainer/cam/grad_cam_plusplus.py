"""Grad-CAM++ (Chattopadhyay et al., 2018): positive gradients weighted per location."""

import torch

from services.explainer.cam.base import BaseCAM

_EPS = 1e-7


class GradCAMPlusPlus(BaseCAM):
    name = "Grad-CAM++"

    @classmethod
    def cam_weights(cls, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        # The closed form for an exponential score, as in the paper's eq. 19.
        grads_2 = gradients.pow(2)
        grads_3 = grads_2 * gradients
        sum_activations = activations.sum(dim=(2, 3), keepdim=True)
        alpha = grads_2 / (2 * grads_2 + sum_activations * grads_3 + _EPS)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * torch.relu(gradients)).sum(dim=(2, 3), keepdim=True)
