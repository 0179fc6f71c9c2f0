"""Who may call the explainer, and for what.

Callers present a bearer token (``authorization: Bearer <token>`` metadata). The
callers file, TOML made by ``fedxai credentials``, names each caller with its roles
and the SHA-256 of its token, so the file itself holds no secret::

    [callers.client-0]
    roles = ["writer"]
    client_id = "client-0"   # stores client-0's evaluations only
    token_sha256 = "9f86d081…"

- ``reader``: ListExplanations, GetInfo, and Explain without storing.
- ``writer``: Explain, storing too, and GetInfo. A writer bound to a ``client_id`` (a
  trainer) stores only that client's evaluations; an unbound one (the aggregator) any.
- Presigned URLs go to readers only: a writer's replies carry keys without them.

Health checks and reflection stay open: they reveal nothing that is stored.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from fedxai.errors import InvalidArgument
from fedxai.settings import SettingsError
from fedxai.storage.layout import validate_id
from fedxai.v1 import explainer_pb2 as pb

READER, WRITER = "reader", "writer"
ROLES = (READER, WRITER)
SERVICE_PREFIX = "/" + pb.DESCRIPTOR.services_by_name["Explainer"].full_name + "/"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_BEARER = "bearer "
_UNREAD = object()  # what a stranger's request is left as (gRPC takes None for a failed parse)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    client_id: str = ""  # a writer bound to this client

    def refusal(self, method: str, request: Any) -> str:
        """Why this caller may not make this call; "" when it may."""
        if method == "ListExplanations" and READER not in self.roles:
            return f"caller {self.name!r} may not list explanations: that needs the reader role"
        if method == "Explain" and request.store:
            if WRITER not in self.roles:
                return f"store: caller {self.name!r} may not store explanations: that needs the writer role"
            if self.client_id and request.subject not in (pb.SUBJECT_UNSPECIFIED, pb.SUBJECT_CLIENT_EVALUATION):
                return f"subject: caller {self.name!r} stores its own evaluations only"
            if self.client_id and request.client_id != self.client_id:
                return f"client_id: caller {self.name!r} stores for client_id {self.client_id!r} only"
        return ""


class Callers:
    """The callers file, read once at start: a broken file stops the explainer there."""

    def __init__(self, by_digest: Mapping[str, Caller]) -> None:
        self._by_digest = dict(by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def parse(cls, text: str, source: str) -> Callers:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"{source}: not TOML: {error}") from None
        extra = sorted(set(document) - {"callers"})
        if extra or not isinstance(document.get("callers"), dict) or not document["callers"]:
            raise SettingsError(f"{source}: expected [callers.<name>] tables and nothing else")
        by_digest: dict[str, Caller] = {}
        for name, entry in document["callers"].items():
            caller, digest = _caller(name, entry, f"{source}: caller {name!r}")
            if digest in by_digest:
                raise SettingsError(f"{source}: callers {by_digest[digest].name!r} and {name!r} share a token")
            by_digest[digest] = caller
        return cls(by_digest)

    def identify(self, metadata: Mapping[str, str]) -> Caller | None:
        header = metadata.get("authorization", "")
        if not header.lower().startswith(_BEARER):
            return None
        return self._by_digest.get(token_digest(header[len(_BEARER) :].strip()))


def _caller(name: str, entry: Any, where: str) -> tuple[Caller, str]:
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected a table")
    unknown = sorted(set(entry) - {"roles", "client_id", "token_sha256"})
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r} (known: client_id, roles, token_sha256)")
    roles = entry.get("roles")
    if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
        raise SettingsError(f"{where}: roles must list one or both of {', '.join(ROLES)}")
    digest = entry.get("token_sha256")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise SettingsError(f"{where}: token_sha256 must be 64 lowercase hex digits")
    client_id = entry.get("client_id", "")
    if client_id:
        if WRITER not in roles:
            raise SettingsError(f"{where}: client_id binds a writer; this caller does not write")
        try:
            validate_id("client_id", str(client_id))
        except InvalidArgument as error:
            raise SettingsError(f"{where}: {error}") from None
    return Caller(name, frozenset(roles), str(client_id)), digest


def _refuse(code: grpc.StatusCode, message: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    return refuse


class CallerCheck(grpc.ServerInterceptor):
    """Checks every Explainer call against the callers file before it is served."""

    def __init__(self, callers: Callers) -> None:
        self.callers = callers

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None or not details.method.startswith(SERVICE_PREFIX):
            return handler  # health checks, reflection, unknown methods
        method = details.method[len(SERVICE_PREFIX) :]
        metadata = {key: value for key, value in details.invocation_metadata if isinstance(value, str)}
        caller = self.callers.identify(metadata)
        if caller is None:
            # Refused before the request is even parsed: a stranger's 16 MiB cost no decoding.
            return grpc.unary_unary_rpc_method_handler(
                _refuse(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "authorization: send 'authorization: Bearer <token>' with a token this explainer knows",
                ),
                request_deserializer=lambda _data: _UNREAD,
                response_serializer=handler.response_serializer,
            )
        serve = handler.unary_unary

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            refusal = caller.refusal(method, request)
            if refusal:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
            response = serve(request, context)
            if method == "Explain" and READER not in caller.roles:
                for image in response.images:
                    image.url = ""
            return response

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
