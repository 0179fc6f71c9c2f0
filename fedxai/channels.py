"""gRPC channels to the explainer: TLS when a CA certificate is given."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from fedxai.settings import DEFAULT_MAX_MESSAGE_BYTES

MESSAGE_OPTIONS = (
    ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
)


def open_channel(address: str, ca_file: str = "", options: Sequence[tuple[str, int]] = MESSAGE_OPTIONS) -> grpc.Channel:
    """A channel to ``address``, verifying the server against ``ca_file`` when one is given."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)
