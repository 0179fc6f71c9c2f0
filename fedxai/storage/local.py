"""The embedded default: objects as files under a folder, same key layout as S3."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from fedxai.errors import ObjectNotFound, StoreMisconfigured
from fedxai.storage.base import ObjectInfo, ObjectStore
from fedxai.storage.layout import validate_key


class LocalStore(ObjectStore):
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        # Files get the mode any other file would; read once, as os.umask can only be read by setting it.
        umask = os.umask(0o022)
        os.umask(umask)
        self.file_mode = 0o666 & ~umask

    def _path(self, key: str) -> Path:
        validate_key("key", key)
        return self.root / key

    def check(self) -> None:
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
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, self.file_mode)  # mkstemp makes owner-only files
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

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
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(ObjectInfo(key, path.stat().st_size))
        return sorted(found, key=lambda info: info.key)

    def url(self, key: str) -> str:
        return ""
