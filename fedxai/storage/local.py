"""The embedded default: objects as files under a folder, same key layout as S3."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from fedxai.errors import InvalidArgument, ObjectNotFound, StoreMisconfigured, StoreUnavailable
from fedxai.storage.base import ObjectInfo, ObjectStore
from fedxai.storage.layout import validate_key


class _Outside(InvalidArgument):
    """A key that a symbolic link in the store leads out of it."""


class LocalStore(ObjectStore):
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def describe(self) -> str:
        return f"the folder {self.root}"

    def _path(self, key: str) -> Path:
        validate_key("key", key)
        path = self.root / key
        # A symbolic link planted in the store must not lead reads or writes out of it.
        if not path.resolve().is_relative_to(self.root):
            raise _Outside("key", f"{key!r} leads outside the store")
        return path

    def check(self, create: bool = True) -> None:
        if not create:
            if not self.root.is_dir():
                raise StoreMisconfigured(f"output folder {self.root} does not exist")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreMisconfigured(f"cannot create output folder {self.root}: {error}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreMisconfigured(f"output folder {self.root} is not writable")

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        # The manifest records the metadata; a folder has nowhere native to keep it.
        path = self._path(key)
        # Write then rename, so a reader never sees half a file. The mode is what
        # the umask makes of rw-rw-rw-, as for any other file.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as error:  # a full disk, a read-only folder: the store cannot take it now
            tmp.unlink(missing_ok=True)
            raise StoreUnavailable(f"cannot write {key!r} under {self.root}: {error.strerror}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as error:
            raise StoreUnavailable(f"cannot delete {key!r} under {self.root}: {error.strerror}") from None

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except _Outside:
            return False

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):  # temporary files of writes in flight
                    continue
                path = Path(dirpath, name)
                if path.is_symlink():  # not the store's own (os.walk follows no linked folder)
                    continue
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    stat = path.stat()
                    found.append(ObjectInfo(key, stat.st_size, f"{stat.st_mtime_ns}-{stat.st_size}"))
        return sorted(found, key=lambda info: info.key)

    def url(self, key: str) -> str:
        return ""
