"""Decoded models, kept by the SHA-256 of their safetensors bytes.

The trainers of a round all explain the same global model: the first request
pays for reading, hashing and decoding it, the others find it here. Keys are
content hashes, so a hit is always the very model the request names.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

from fedxai.models import Architecture, build_model


class LoadedModel:
    """One decoded model. Each call borrows a module of its own, since hooks and
    activations belong to a call; modules are reused afterwards and share the
    (read-only) weights."""

    def __init__(self, sha256: str, architecture: Architecture, state: dict[str, torch.Tensor], first: nn.Module):
        self.sha256 = sha256
        self.architecture = architecture
        self._state = state
        self._idle = [first]
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[nn.Module]:
        with self._lock:
            module = self._idle.pop() if self._idle else None
        if module is None:
            # The state fitted when this model was first built, so this cannot fail.
            module = build_model(self.architecture, self._state, "model")
        try:
            yield module
        finally:
            with self._lock:
                self._idle.append(module)


class ModelCache:
    """The ``capacity`` most recently used models, least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, architecture: str = "") -> LoadedModel | None:
        """The model with these bytes, built as ``architecture`` (any, when empty)."""
        with self._lock:
            key = next((k for k in self._models if k[0] == sha256 and architecture in ("", k[1])), None)
            if key is None:
                return None
            self._models.move_to_end(key)
            return self._models[key]

    def add(self, model: LoadedModel) -> LoadedModel:
        with self._lock:
            self._models[(model.sha256, model.architecture.name)] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return model
