"""The gRPC face of the explainer: requests in, responses or status codes out.

Errors are translated in one place, ``_STATUS``: a domain error becomes its
status code with a message naming the field; anything else is logged with its
traceback and answered as INTERNAL without leaking details.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc

from fedxai.errors import (
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
from services.explainer.explanations import ExplanationService

log = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
_STATUS: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ObjectNotFound, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreMisconfigured, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
]
_KNOWN = tuple(cls for cls, _ in _STATUS)

Handler = Callable[..., Any]


def _status_for(error: Exception) -> grpc.StatusCode:
    return next(code for cls, code in _STATUS if isinstance(error, cls))


def translate_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def wrapper(self: ExplainerServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except _KNOWN as error:
            code = _status_for(error)
            if not isinstance(error, FedxaiError):
                log.warning("%s: storage: %s", handler.__name__, error)
            context.abort(code, str(error))
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the explainer logged the details")

    return wrapper


class ExplainerServicer(pb_grpc.ExplainerServicer):
    def __init__(self, service: ExplanationService) -> None:
        self.service = service

    @translate_errors
    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:  # noqa: N802
        return self.service.explain(request)

    @translate_errors
    def ListExplanations(  # noqa: N802
        self, request: pb.ListExplanationsRequest, context: grpc.ServicerContext
    ) -> pb.ListExplanationsResponse:
        return self.service.list_explanations(request)

    @translate_errors
    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:  # noqa: N802
        return self.service.info()
