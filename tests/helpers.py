"""Request builders shared by the explainer tests."""

from __future__ import annotations

import cv2
import numpy as np

from fedxai.tensors import tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb

TRAINED_ON = 6000  # digits of the MNIST test split the shared model learns; the rest are held out


def explain_request(images: np.ndarray, labels: np.ndarray, weights: bytes, **fields: object) -> pb.ExplainRequest:
    """An Explain request for (N, 28, 28) uint8 digits and an inline mnist_cnn."""
    request = pb.ExplainRequest(
        task_id="xaitest",
        round=1,
        client_id="client-0",
        inline_model=pb.InlineModel(architecture="mnist_cnn", safetensors=weights),
        tensor=tensor_to_proto(np.ascontiguousarray(images[:, None])),
        labels=[int(label) for label in labels],
        store=True,
    )
    for name, value in fields.items():
        if isinstance(value, pb.Tensor | pb.InlineModel | pb.ModelRef | pb.EncodedImages | pb.Normalization):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    picture = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None, "not a decodable JPEG"
    return picture
