"""Tensors on the wire: the ``fedxai.v1.Tensor`` message and safetensors weights.

Nothing here unpickles: sample tensors are raw bytes with an explicit shape and
dtype, weights are safetensors (a JSON header and raw buffers).
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedxai.errors import InvalidArgument
from fedxai.v1 import explainer_pb2 as pb

_NUMPY_DTYPES: dict[pb.DType, np.dtype] = {pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_UINT8: np.dtype("u1")}
# Bounds on a safetensors header, checked before the library builds anything:
# the models here have a few dozen tensors and a header of a few kilobytes.
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 1024


def tensor_to_proto(array: np.ndarray) -> pb.Tensor:
    """Encodes a float32 or uint8 array."""
    for enum_value, dtype in _NUMPY_DTYPES.items():
        if array.dtype == dtype:
            return pb.Tensor(shape=list(array.shape), dtype=enum_value, data=np.ascontiguousarray(array).tobytes())
    raise TypeError(f"unsupported dtype {array.dtype}; use float32 or uint8")


def tensor_from_proto(message: pb.Tensor, field: str) -> np.ndarray:
    """Decodes and checks a Tensor: known dtype, byte count matching the shape, finite values."""
    dtype = _NUMPY_DTYPES.get(message.dtype)
    if dtype is None:
        raise InvalidArgument(f"{field}.dtype", "must be DTYPE_FLOAT32 or DTYPE_UINT8")
    shape = tuple(message.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidArgument(f"{field}.shape", f"negative dimension in {list(shape)}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(message.data) != expected:
        raise InvalidArgument(
            f"{field}.data",
            f"{len(message.data)} bytes do not match shape {list(shape)} of {np.dtype(dtype).name} ({expected} bytes)",
        )
    array = np.frombuffer(message.data, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidArgument(f"{field}.data", "contains NaN or Inf")
    return array


def encode_state_dict(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    return save_safetensors(tensors, metadata=metadata)


def safetensors_header(data: bytes, field: str) -> dict:
    """The JSON header of a safetensors blob, refused when it is larger, deeper or
    holds more tensors than a model's does."""
    if len(data) < 8:
        raise InvalidArgument(field, "not valid safetensors (shorter than its header length)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise InvalidArgument(field, f"not valid safetensors (a header of {header_len} bytes)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except RecursionError:
        raise InvalidArgument(field, "its header nests deeper than safetensors does") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidArgument(field, "not valid safetensors (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidArgument(field, "not valid safetensors (its header is not a JSON object)")
    tensors = len(header) - ("__metadata__" in header)
    if tensors > MAX_TENSORS:
        raise InvalidArgument(field, f"{tensors} tensors, more than the {MAX_TENSORS} a model may have")
    return header


def safetensors_metadata(data: bytes, field: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob, from its checked header."""
    metadata = safetensors_header(data, field).get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def decode_state_dict(data: bytes, field: str) -> dict[str, torch.Tensor]:
    if not data:
        raise InvalidArgument(field, "is empty")
    safetensors_header(data, field)
    try:
        state = load_safetensors(data)
    except SafetensorError as error:
        raise InvalidArgument(field, f"not valid safetensors ({error})") from None
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise InvalidArgument(field, f"tensor {name} has dtype {tensor.dtype}, need floating point")
        if not _all_finite(tensor):
            raise InvalidArgument(field, f"tensor {name} contains NaN or Inf")
    return state


def _all_finite(tensor: torch.Tensor) -> bool:
    # One cheap pass: a sum is finite when every element is, unless it overflowed,
    # and only then is the exact element-wise check needed.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
