"""Object storage behind one interface: a local folder or S3/MinIO."""

from fedxai.settings import StorageSettings
from fedxai.storage.base import ObjectInfo, ObjectStore
from fedxai.storage.local import LocalStore


def open_store(settings: StorageSettings) -> ObjectStore:
    """The S3 store when an endpoint is configured, else the local folder."""
    if settings.s3 is not None:
        from fedxai.storage.s3 import S3Store  # keeps minio out of local-only processes

        return S3Store(settings.s3)
    return LocalStore(settings.output_dir)


__all__ = ["LocalStore", "ObjectInfo", "ObjectStore", "open_store"]
