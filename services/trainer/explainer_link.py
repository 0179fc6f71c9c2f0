"""Delivers explanation requests to the Explainer without ever holding up a round.

Each call has a deadline. A request that cannot be delivered now is written to
the node's outbox (serialized protobuf, never pickle) and sent again, oldest
first, before the next one, or by ``fedxai run`` when the federation ends.
Requests the Explainer refuses as malformed cannot succeed later: they move to
``rejected/`` beside the reason, for a person to look at.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from torch import nn

from fedxai.channels import open_channel
from fedxai.data import Dataset
from fedxai.models import Architecture
from fedxai.tensors import encode_state_dict, tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Worth resending later: the explainer (or its store) is away or overloaded.
# Anything else is an answer about the request itself, which resending cannot change.
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.CANCELLED,
}


@dataclass
class Delivery:
    sent: int = 0  # requests the Explainer accepted
    stored: int = 0  # images it stored for them
    queued: int = 0  # requests waiting in the outbox afterwards
    rejected: int = 0  # requests refused as malformed, moved aside
    blank: int = 0  # stored images whose map is all zero
    weak: int = 0  # stored images whose map is weak

    def count(self, response: pb.ExplainResponse) -> None:
        """Adds what the Explainer stored for one request."""
        self.sent += 1
        self.stored += len(response.images)
        self.blank += sum(image.degenerate for image in response.images)
        self.weak += sum(image.weak for image in response.images)


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, request: pb.ExplainRequest) -> Path:
        """Writes the request atomically; names sort by task, round and client."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{request.task_id}-round-{request.round:03d}-{request.client_id}.pb"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(request.SerializeToString())
            path = self.directory / name
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def pending(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.pb") if p.is_file())

    def reject(self, path: Path, reason: str) -> None:
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True)
        os.replace(path, rejected / path.name)
        (rejected / f"{path.name}.reason.txt").write_text(reason + "\n")


def _backlog(outbox: Outbox, request: pb.ExplainRequest | None) -> Iterator[tuple[Path | None, pb.ExplainRequest]]:
    for path in outbox.pending():
        try:
            message = pb.ExplainRequest.FromString(path.read_bytes())
        except DecodeError as error:
            log.error("outbox file %s is not an ExplainRequest: %s", path.name, error)
            outbox.reject(path, f"unreadable: {error}")
            continue
        yield path, message
    if request is not None:
        yield None, request


def deliver(
    address: str,
    timeout: float,
    outbox: Outbox,
    request: pb.ExplainRequest | None = None,
    ca_file: str = "",
    checkpoint: pb.ModelRef | None = None,
) -> Delivery:
    """Sends what the outbox holds, oldest first, then ``request``.

    With ``checkpoint``, ``request`` (which carries its weights inline) is first
    sent naming that checkpoint instead. Stops at the first transient failure;
    ``request`` is queued, with its weights, unless it was delivered or refused.
    """
    result = Delivery()
    undelivered = request
    with open_channel(address, ca_file) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        for path, message in _backlog(outbox, request):
            name = path.name if path else f"round {message.round}"
            try:
                if path is None and checkpoint is not None:
                    response = _explain_by_reference(stub, message, checkpoint, timeout)
                else:
                    response = stub.Explain(message, timeout=timeout)
            except grpc.RpcError as error:
                code, details = error.code(), error.details()
                if code in _TRANSIENT:
                    log.warning("explainer unavailable (%s: %s); %s stays queued", code.name, details, name)
                    break
                log.error("explainer refused %s: %s: %s", name, code.name, details)
                outbox.reject(path or outbox.add(message), f"{code.name}: {details}")
                result.rejected += 1
            else:
                result.count(response)
                if path is not None:
                    path.unlink()
            if path is None:
                undelivered = None
    if undelivered is not None:
        outbox.add(undelivered)
    result.queued = len(outbox.pending())
    return result


def _explain_by_reference(
    stub: pb_grpc.ExplainerStub, request: pb.ExplainRequest, checkpoint: pb.ModelRef, timeout: float
) -> pb.ExplainResponse:
    """Explains ``request`` naming ``checkpoint`` for its model; sends the weights
    after all when the explainer cannot use the checkpoint (another store, or
    one that changed since)."""
    by_reference = pb.ExplainRequest()
    by_reference.CopyFrom(request)
    by_reference.model_ref.CopyFrom(checkpoint)  # replaces inline_model: one of
    try:
        return stub.Explain(by_reference, timeout=timeout)
    except grpc.RpcError as error:
        if error.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            raise
        log.info("explainer cannot use checkpoint %s (%s); sending the weights", checkpoint.key, error.details())
    return stub.Explain(request, timeout=timeout)


def samples_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of every class present: the same
    samples every round, so heatmaps can be compared across rounds."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


def build_request(
    *,
    task_id: str,
    round_number: int,
    client_id: str,
    arch: Architecture,
    model: nn.Module,
    data: Dataset,
    per_class: int,
    cam_method: str,
) -> pb.ExplainRequest:
    chosen = samples_per_class(data.labels, per_class)
    method = pb.CamMethod.Value(cam_method)
    # The round waits for the reply: the scores, which cost several times the maps, come
    # after it; CAM_METHOD_AUTO chooses by them, so it waits for them.
    scoring = pb.SCORING_IN_REPLY if method == pb.CAM_METHOD_AUTO else pb.SCORING_AFTER_REPLY
    return pb.ExplainRequest(
        task_id=task_id,
        round=round_number,
        client_id=client_id,
        inline_model=pb.InlineModel(
            architecture=arch.name,
            safetensors=encode_state_dict(model.state_dict(), {"architecture": arch.name}),
        ),
        tensor=tensor_to_proto(np.ascontiguousarray(data.images[chosen][:, None])),
        labels=data.labels[chosen].tolist(),
        normalization=pb.Normalization(mean=arch.mean, std=arch.std),
        method=method,
        store=True,
        scoring=scoring,
    )
