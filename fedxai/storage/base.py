"""The object store interface: a local folder and S3/MinIO implement it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # Changes whenever the object is written again (S3's ETag, a file's mtime and size).
    version: str = ""


class ObjectStore(ABC):
    """Flat keys with '/' separators; see ``fedxai.storage.layout``.

    Implementations raise ``fedxai.errors.ObjectNotFound`` for a missing key and
    other ``fedxai.errors.StoreError`` subclasses for failures of the store.
    """

    kind: str

    @abstractmethod
    def check(self, create: bool = True) -> None:
        """Verifies the store is usable, creating the bucket or folder if missing
        and ``create`` (read-only commands pass False and create nothing)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the objects are, as the logs and the command line say it."""

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Writes the object whole; readers never see a partial object."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object; a missing one is no error."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """All objects whose key starts with ``prefix``, sorted by key."""

    @abstractmethod
    def url(self, key: str) -> str:
        """A URL a person can GET the object from, or "" when there is none."""
