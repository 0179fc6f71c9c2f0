"""Object storage behind one interface: a local folder or S3/MinIO."""

import json
import logging
from collections.abc import Iterator
from typing import Any

from fedxai.errors import ObjectNotFound
from fedxai.settings import StorageSettings
from fedxai.storage.base import ObjectInfo, ObjectStore
from fedxai.storage.layout import RUNS_DIR, parse_metrics_key
from fedxai.storage.local import LocalStore

log = logging.getLogger(__name__)


def open_store(settings: StorageSettings) -> ObjectStore:
    """The S3 store when an endpoint is configured, else the local folder."""
    if settings.s3 is not None:
        from fedxai.storage.s3 import S3Store  # keeps minio out of local-only processes

        return S3Store(settings.s3)
    return LocalStore(settings.output_dir)


def read_document(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The JSON object at ``key`` (a manifest, metrics.json); None when there is
    none, or when it is unreadable, which is logged: one bad document must not
    break the listing of the others."""
    try:
        document = json.loads(store.get(key))
    except ObjectNotFound:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("ignoring unreadable %s: %s", key, error)
        return None
    return document if isinstance(document, dict) else None


def run_records(store: ObjectStore, task: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(task, run, metrics document) of every readable run in the store, or of one task's."""
    for info in store.list(f"{task}/{RUNS_DIR}/" if task else ""):
        run = parse_metrics_key(info.key)
        document = read_document(store, info.key) if run is not None else None
        if run is not None and document is not None:
            yield run[0], run[1], document


__all__ = ["LocalStore", "ObjectInfo", "ObjectStore", "open_store", "read_document", "run_records"]
