"""model-transfer=store: the models go between the aggregator and the trainers through
the run's store, and Flower's messages only name them, with the SHA-256 of the stored
bytes, which the reader checks. The messages come over Flower's authenticated channel, so
a model replaced in the store is refused, not trained on or averaged."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedxai.errors import InvalidArgument, ObjectNotFound
from fedxai.storage import ObjectStore
from fedxai.tensors import decode_state_dict, encode_state_dict, sha256_hex


class TransferError(Exception):
    """A named model that cannot be read: not in the store, or not the bytes the message names."""


def put_model(
    store: ObjectStore, key: str, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> str:
    """Stores the model at ``key`` as safetensors, ``metadata`` in its header and on the
    object; the SHA-256 of what was stored."""
    data = encode_state_dict(dict(state_dict), dict(metadata or {}))
    store.put(key, data, "application/octet-stream", metadata=metadata)
    return sha256_hex(data)


def read_model(store: ObjectStore, key: str, sha256: str) -> dict[str, torch.Tensor]:
    """The model stored at ``key``, if its bytes have the SHA-256 ``sha256``."""
    try:
        data = store.get(key)
    except ObjectNotFound:
        raise TransferError(f"{key} is not in {store.describe()}") from None
    if sha256_hex(data) != sha256:
        raise TransferError(f"{key} in {store.describe()} is not the model the message names (SHA-256 differs)")
    try:
        return decode_state_dict(data, key)
    except InvalidArgument as error:  # bytes that hash right were written so by the sender
        raise TransferError(str(error)) from None
