"""What a trainer sends the Explainer after its evaluation: the samples it
explains, one ``ExplainRequest`` a round (delivered by ``fedxai.delivery``)."""

from __future__ import annotations

import numpy as np
from torch import nn

from fedxai.data import Dataset
from fedxai.models import Architecture
from fedxai.tensors import encode_state_dict, tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb


def samples_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of every class present: the same
    samples every round, so heatmaps can be compared across rounds."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


def build_request(
    *,
    task_id: str,
    run_id: str,
    round_number: int,
    client_id: str,
    arch: Architecture,
    model: nn.Module,
    data: Dataset,
    per_class: int,
    cam_method: str,
    class_names: tuple[str, ...] = (),  # the dataset's; empty: the architecture's
) -> pb.ExplainRequest:
    chosen = samples_per_class(data.labels, per_class)
    method = pb.CamMethod.Value(cam_method)
    # The round waits for the reply: the scores, which cost several times the maps, come
    # after it; CAM_METHOD_AUTO chooses by them, so it waits for them.
    scoring = pb.SCORING_IN_REPLY if method == pb.CAM_METHOD_AUTO else pb.SCORING_AFTER_REPLY
    return pb.ExplainRequest(
        task_id=task_id,
        run_id=run_id,
        round=round_number,
        client_id=client_id,
        inline_model=pb.InlineModel(
            architecture=arch.name,
            safetensors=encode_state_dict(model.state_dict(), {"architecture": arch.name}),
        ),
        tensor=tensor_to_proto(np.ascontiguousarray(data.images[chosen])),
        labels=data.labels[chosen].tolist(),
        class_names=class_names,
        normalization=pb.Normalization(mean=arch.mean, std=arch.std),
        method=method,
        store=True,
        scoring=scoring,
    )
