"""gRPC channels to the explainer: TLS when a CA certificate is given, and a
bearer token on every call when the caller has one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from fedxai.settings import DEFAULT_MAX_MESSAGE_BYTES

MESSAGE_OPTIONS = (
    ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
)
AUTHORIZATION = "authorization"


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _BearerToken(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to each call. An interceptor rather than
    call credentials, which gRPC sends over TLS only: loopback development and a
    private compose network talk plaintext."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {token}")

    def intercept_unary_unary(
        self, continuation: Callable[[grpc.ClientCallDetails, Any], Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        with_token = _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        return continuation(with_token, request)


def open_channel(
    address: str,
    ca_file: str = "",
    token: str = "",
    options: Sequence[tuple[str, int]] = MESSAGE_OPTIONS,
) -> grpc.Channel:
    """A channel to ``address``, verifying the server against ``ca_file`` when one is
    given and presenting ``token`` when one is given."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel
