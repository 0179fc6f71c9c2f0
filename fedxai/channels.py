"""gRPC channels to the explainer: TLS when a CA certificate is given, a bearer
token on every call when the caller has one, and balanced over a fleet.

The explainer may run as several replicas behind one name (``docker compose up
--scale explainer=3``: the name resolves to every replica). A channel spreads its
calls over all the addresses the target resolves to (``round_robin``, rather than
gRPC's default of the first address only), and a call that finds its replica gone
(``UNAVAILABLE``) is retried, on the next one, before the caller sees an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from fedxai.settings import DEFAULT_MAX_MESSAGE_BYTES

# One call and up to three retries, each on the next replica, all within the call's deadline.
MAX_ATTEMPTS = 4
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "fedxai.v1.Explainer"}],
                "retryPolicy": {
                    "maxAttempts": MAX_ATTEMPTS,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
MESSAGE_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.service_config", SERVICE_CONFIG),
    # gRPC retries only a call whose request it still holds: by default 256 KiB of it,
    # less than one batch of samples with its weights.
    ("grpc.per_rpc_retry_buffer_size", DEFAULT_MAX_MESSAGE_BYTES),
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
    options: Sequence[tuple[str, int | str]] = MESSAGE_OPTIONS,
) -> grpc.Channel:
    """A channel to ``address`` (HOST:PORT, or any gRPC target: ``dns:///name:port``,
    ``ipv4:a:port,b:port``), verifying the server against ``ca_file`` when one is
    given and presenting ``token`` when one is given."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel
