"""Delivers explanation requests to the Explainer without ever holding up a round.

Each call has a deadline. A request that cannot be delivered now is written to
an outbox on disk (serialized protobuf, never pickle) and sent again, oldest
first, before the next one, or by ``fedxai run`` when the federation ends.
Requests the Explainer refuses as malformed cannot succeed later: they move to
``rejected/`` beside the reason, for a person to look at. Trainers and the
aggregator deliver this way.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from fedxai.channels import open_channel
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Worth resending later: the explainer (or its store) is away or overloaded, or this
# caller's token is missing or wrong, which its operator fixes without touching the
# requests. Anything else is an answer about the request itself, which resending cannot change.
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
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
        """Writes the request atomically; names sort by task, run, round and client."""
        self.directory.mkdir(parents=True, exist_ok=True)
        subject = {pb.SUBJECT_GLOBAL_MODEL: "global", pb.SUBJECT_CLIENT_UPDATE: "update-"}.get(request.subject, "")
        run = f"{request.run_id}-" if request.run_id else ""
        name = f"{request.task_id}-{run}round-{request.round:03d}-{subject}{request.client_id}.pb"
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


def _backlog(
    outbox: Outbox, request: pb.ExplainRequest | None, skip: Collection[Path]
) -> Iterator[tuple[Path | None, pb.ExplainRequest]]:
    for path in outbox.pending():
        if path in skip:
            continue
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
    on_reply: Callable[[pb.ExplainRequest, pb.ExplainResponse], None] | None = None,
    token: str = "",
    staged: Path | None = None,
    skip: Collection[Path] = (),
) -> Delivery:
    """Sends what the outbox holds, oldest first, but the files in ``skip``, then ``request``.

    With ``checkpoint``, ``request`` (which carries its weights inline) is first
    sent naming that checkpoint instead. Stops at the first transient failure;
    ``request`` is queued, with its weights, unless it was delivered or refused.
    ``on_reply`` gets every request delivered, with the Explainer's reply. ``token``
    is the caller's, when the Explainer checks its callers. ``staged`` is where
    ``request`` already waits in the outbox: it leaves it once delivered.
    """
    result = Delivery()
    undelivered = request
    with open_channel(address, ca_file, token) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        for path, message in _backlog(outbox, request, {*skip, *([staged] if staged else [])}):
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
                outbox.reject(path or staged or outbox.add(message), f"{code.name}: {details}")
                result.rejected += 1
            else:
                result.count(response)
                done = path or staged
                if done is not None:
                    done.unlink(missing_ok=True)
                if on_reply is not None:
                    on_reply(message, response)
            if path is None:
                undelivered = None
    if undelivered is not None and staged is None:
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
