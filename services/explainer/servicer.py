"""The gRPC face of the explainer: requests in, responses or status codes out.

Errors are translated in one place, ``_STATUS``: a domain error becomes its
status code with a message naming the field; anything else is logged with its
traceback and answered as INTERNAL without leaking details.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from fedxai.errors import (
    Abandoned,
    FailedPrecondition,
    FedxaiError,
    InvalidArgument,
    NotFound,
    ObjectNotFound,
    ResourceExhausted,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
)
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.explainer.budget import MAX_WAIT, MemoryBudget, estimated_bytes
from services.explainer.explanations import ExplanationService

log = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
_STATUS: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ObjectNotFound, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Abandoned, grpc.StatusCode.CANCELLED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreMisconfigured, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
]
_KNOWN = tuple(cls for cls, _ in _STATUS)

Handler = Callable[..., Any]
MAX_MESSAGE_CHARS = 300


def _status_for(error: Exception) -> grpc.StatusCode:
    return next(code for cls, code in _STATUS if isinstance(error, cls))


def bounded(message: str) -> str:
    """A message that fits gRPC's metadata whatever the caller sent (a 100 KB id, say):
    the field's name comes first, so cutting the end keeps it."""
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


def translate_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def wrapper(self: ExplainerServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except _KNOWN as error:
            code = _status_for(error)
            if not isinstance(error, FedxaiError):
                log.warning("%s: storage: %s", handler.__name__, error)
            context.abort(code, bounded(str(error)))
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the explainer logged the details")

    return wrapper


class ExplainerServicer(pb_grpc.ExplainerServicer):
    def __init__(self, service: ExplanationService, max_calls: int, budget: MemoryBudget) -> None:
        self.service = service
        self.budget = budget
        # The heavy calls share this many of the server's threads; the others stay free.
        self._calls = threading.BoundedSemaphore(max_calls)
        self._max_calls = max_calls

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        if not self._calls.acquire(blocking=False):
            raise ResourceExhausted("explainer", f"busy with {self._max_calls} calls; retry later")
        try:
            yield
        finally:
            self._calls.release()

    @translate_errors
    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:  # noqa: N802
        with self._admitted():
            cost = estimated_bytes(request, self.service.limits.max_batch_size)
            remaining = context.time_remaining()  # None without a deadline
            with self.budget.reserve(cost, MAX_WAIT if remaining is None else remaining):
                return self.service.explain(request, context.is_active)

    @translate_errors
    def ListExplanations(  # noqa: N802
        self, request: pb.ListExplanationsRequest, context: grpc.ServicerContext
    ) -> pb.ListExplanationsResponse:
        with self._admitted():
            return self.service.list_explanations(request)

    @translate_errors
    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:  # noqa: N802
        return self.service.info()
