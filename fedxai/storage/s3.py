"""Objects in S3/MinIO through the ``minio`` SDK."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from types import TracebackType
from typing import Self

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from urllib3.connectionpool import ConnectionPool
from urllib3.response import BaseHTTPResponse

from fedxai.errors import ObjectNotFound, StoreError, StoreMisconfigured, StoreUnavailable
from fedxai.settings import S3Settings
from fedxai.storage.base import ObjectInfo, ObjectStore
from fedxai.storage.layout import validate_key

_REFUSED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "AllAccessDisabled",
    "AccountProblem",
}
_NOT_FOUND = {"NoSuchKey", "ResourceNotFound"}


class _StoreRetry(urllib3.Retry):
    """urllib3's retries, except that a request whose answer timed out is not sent again, so
    that a hung store answers UNAVAILABLE after one timeout. A connection that the server
    reset or dropped (a pooled keep-alive connection it had closed) is still retried, on a
    new connection, for the idempotent methods urllib3 retries."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class S3Store(ObjectStore):
    kind = "s3"

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.url_expiry = timedelta(seconds=settings.url_expiry)
        # Fail within seconds rather than minutes when the server is down or hung;
        # the trainers queue what could not be delivered.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(5.0, settings.timeout), read=settings.timeout),
            retries=_StoreRetry(total=2, read=1, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
            maxsize=16,
        )
        self.client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        # Signing a URL is local computation; this client never sends a request.
        self.signer = Minio(
            settings.public_endpoint or settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
        )

    @contextmanager
    def _translated(self, action: str, key: str = "") -> Iterator[None]:
        where = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"
        try:
            yield
        except S3Error as error:
            if error.code in _NOT_FOUND:
                raise ObjectNotFound(key) from None
            if error.code in _REFUSED:
                raise StoreMisconfigured(
                    f"{self.settings.endpoint} refused to {action} {where} ({error.code}: "
                    f"{error.message}); check FEDXAI_S3_ACCESS_KEY, FEDXAI_S3_SECRET_KEY "
                    "and FEDXAI_S3_BUCKET"
                ) from None
            raise StoreError(f"{action} {where} failed: {error.code}: {error.message}") from None
        except urllib3.exceptions.HTTPError as error:
            raise StoreUnavailable(
                f"cannot reach S3 at {self.settings.endpoint} to {action} {where}: {error}"
            ) from None
        except MinioException as error:
            raise StoreUnavailable(f"{action} {where} failed: {error}") from None

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.settings.endpoint}"

    def check(self, create: bool = True) -> None:
        with self._translated("check"):
            if self.client.bucket_exists(bucket_name=self.bucket):
                return
            if not create:
                raise StoreMisconfigured(f"bucket {self.bucket!r} does not exist at {self.settings.endpoint}")
            try:
                self.client.make_bucket(bucket_name=self.bucket)
            except S3Error as error:
                if error.code != "BucketAlreadyOwnedByYou":  # another service made it meanwhile
                    raise

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        validate_key("key", key)
        with self._translated("write", key):
            self.client.put_object(
                bucket_name=self.bucket,
                object_name=key,
                data=io.BytesIO(data),
                length=len(data),
                content_type=content_type,
                metadata=dict(metadata or {}),
            )

    def get(self, key: str) -> bytes:
        validate_key("key", key)
        with self._translated("read", key):
            response = self.client.get_object(bucket_name=self.bucket, object_name=key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def delete(self, key: str) -> None:
        validate_key("key", key)
        with self._translated("delete", key):
            self.client.remove_object(bucket_name=self.bucket, object_name=key)

    def exists(self, key: str) -> bool:
        validate_key("key", key)
        try:
            with self._translated("stat", key):
                self.client.stat_object(bucket_name=self.bucket, object_name=key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        with self._translated("list", prefix):
            objects = self.client.list_objects(bucket_name=self.bucket, prefix=prefix or None, recursive=True)
            return sorted(
                (ObjectInfo(obj.object_name, obj.size or 0, obj.etag or "") for obj in objects if obj.object_name),
                key=lambda info: info.key,
            )

    def url(self, key: str) -> str:
        validate_key("key", key)
        return self.signer.presigned_get_object(bucket_name=self.bucket, object_name=key, expires=self.url_expiry)
