"""CAM methods, one module each, and the registry from the proto enum to the class."""

from fedxai.v1 import explainer_pb2 as pb
from services.explainer.cam.base import BaseCAM, CamResult, normalise, upsample
from services.explainer.cam.grad_cam import GradCAM
from services.explainer.cam.grad_cam_plusplus import GradCAMPlusPlus
from services.explainer.cam.hires_cam import HiResCAM
from services.explainer.cam.layer_cam import LayerCAM
from services.explainer.cam.layers import TargetLayers, target_layers
from services.explainer.cam.xgrad_cam import XGradCAM

# Every method, in the proto's order: all of them are drawn from one backward pass.
ALL_METHODS: tuple[type[BaseCAM], ...] = (GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM)
METHODS: dict[int, type[BaseCAM]] = {
    pb.CAM_METHOD_UNSPECIFIED: GradCAM,
    pb.CAM_METHOD_GRAD_CAM: GradCAM,
    pb.CAM_METHOD_GRAD_CAM_PLUS_PLUS: GradCAMPlusPlus,
    pb.CAM_METHOD_HIRES_CAM: HiResCAM,
    pb.CAM_METHOD_XGRAD_CAM: XGradCAM,
    pb.CAM_METHOD_LAYER_CAM: LayerCAM,
}

__all__ = [
    "ALL_METHODS",
    "METHODS",
    "BaseCAM",
    "CamResult",
    "TargetLayers",
    "normalise",
    "target_layers",
    "upsample",
]
