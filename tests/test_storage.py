"""One contract for every store: a local folder, and S3 through the minio SDK
against real S3 servers on loopback (moto, and nanio which checks signatures)."""

from __future__ import annotations

import dataclasses
import itertools
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from fedxai.errors import InvalidArgument, ObjectNotFound, StoreMisconfigured, StoreUnavailable
from fedxai.settings import S3Settings, SettingsError, StorageSettings
from fedxai.storage import LocalStore, ObjectStore
from fedxai.storage.s3 import S3Store
from tests.conftest import NANIO_ACCESS_KEY, free_port, s3_settings

_buckets = itertools.count()


def new_bucket() -> str:
    return f"fedxai-test-{next(_buckets)}"


@pytest.fixture(params=["local", "s3-moto", "s3-nanio"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        store: ObjectStore = LocalStore(tmp_path / "objects")
    else:
        endpoint = request.getfixturevalue("moto_endpoint" if request.param == "s3-moto" else "nanio_endpoint")
        store = S3Store(s3_settings(endpoint, new_bucket()))
    store.check()
    yield store


class TestStoreContract:
    def test_put_then_get_returns_the_same_bytes(self, store: ObjectStore) -> None:
        payload = bytes(range(256)) * 100
        store.put("task/round-001/client-0/gradcam_class_3.jpg", payload, "image/jpeg", {"class": "3"})
        assert store.get("task/round-001/client-0/gradcam_class_3.jpg") == payload

    def test_put_replaces_an_object(self, store: ObjectStore) -> None:
        store.put("a/b.json", b"old", "application/json")
        store.put("a/b.json", b"new", "application/json")
        assert store.get("a/b.json") == b"new"

    def test_missing_object_raises_object_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFound) as raised:
            store.get("no/such/object.jpg")
        assert raised.value.key == "no/such/object.jpg"
        assert not store.exists("no/such/object.jpg")

    def test_exists(self, store: ObjectStore) -> None:
        store.put("x/y.bin", b"1", "application/octet-stream")
        assert store.exists("x/y.bin")
        assert not store.exists("x/y")  # a prefix is not an object

    def test_list_is_recursive_sorted_and_filtered_by_prefix(self, store: ObjectStore) -> None:
        keys = ["t/round-002/c1/m.json", "t/round-001/c2/m.json", "t/round-001/c1/m.json", "u/z.json"]
        for key in keys:
            store.put(key, key.encode(), "application/json")
        assert [info.key for info in store.list("t/")] == sorted(keys[:3])
        assert [info.key for info in store.list("t/round-001/")] == sorted(keys[1:3])
        assert [info.size for info in store.list("u/")] == [len(b"u/z.json")]
        assert [info.key for info in store.list()] == sorted(keys)
        assert store.list("nothing/") == []

    @pytest.mark.parametrize("key", ["../escape.jpg", "a/../../b", "/abs", "a//b", "a/.hidden", ""])
    def test_keys_cannot_escape_or_be_malformed(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(InvalidArgument, match="not a valid object key"):
            store.put(key, b"x", "text/plain")
        with pytest.raises(InvalidArgument):
            store.get(key)


def test_local_store_keeps_the_key_layout_as_folders(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("xaitest/round-001/client-0/gradcam_class_7.jpg", b"jpeg", "image/jpeg")
    assert (tmp_path / "xaitest" / "round-001" / "client-0" / "gradcam_class_7.jpg").read_bytes() == b"jpeg"
    assert not list(tmp_path.rglob(".*")), "no temporary files left behind"
    assert store.url("xaitest/round-001/client-0/gradcam_class_7.jpg") == ""


def test_s3_store_creates_the_bucket_and_sets_object_metadata(moto_endpoint: str) -> None:
    bucket = new_bucket()
    store = S3Store(s3_settings(moto_endpoint, bucket))
    client = Minio(moto_endpoint, access_key=NANIO_ACCESS_KEY, secret_key="x", secure=False)
    assert not client.bucket_exists(bucket_name=bucket)
    store.check()
    assert client.bucket_exists(bucket_name=bucket)
    store.put("t/round-001/c/gradcam_class_1.jpg", b"img", "image/jpeg", {"predicted-class": "1"})
    stat = client.stat_object(bucket_name=bucket, object_name="t/round-001/c/gradcam_class_1.jpg")
    assert stat.content_type == "image/jpeg"
    assert stat.metadata["x-amz-meta-predicted-class"] == "1"


def test_presigned_url_is_signed_and_fetchable(nanio_endpoint: str) -> None:
    store = S3Store(s3_settings(nanio_endpoint, new_bucket()))
    store.check()
    store.put("t/round-001/c/gradcam_class_2.jpg", b"\xff\xd8jpeg", "image/jpeg")
    url = store.url("t/round-001/c/gradcam_class_2.jpg")
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\xff\xd8jpeg"
    tampered = url.replace("gradcam_class_2", "gradcam_class_3")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(tampered, timeout=10)
    raised.value.close()
    assert raised.value.code == 403


def test_presigned_urls_expire_after_the_configured_seconds(nanio_endpoint: str) -> None:
    env = {"FEDXAI_S3_ENDPOINT": nanio_endpoint, "FEDXAI_S3_ACCESS_KEY": "a", "FEDXAI_S3_SECRET_KEY": "b"}
    assert StorageSettings.from_env(env).s3.url_expiry == 3600  # type: ignore[union-attr]
    with pytest.raises(SettingsError, match="over S3's limit"):
        StorageSettings.from_env({**env, "FEDXAI_S3_URL_EXPIRY": str(8 * 24 * 3600)})
    assert StorageSettings.from_env({**env, "FEDXAI_S3_URL_EXPIRY": "1"}).s3.url_expiry == 1  # type: ignore[union-attr]
    store = S3Store(dataclasses.replace(s3_settings(nanio_endpoint, new_bucket()), url_expiry=1))
    store.check()
    store.put("t/round-001/c/gradcam_class_2.jpg", b"\xff\xd8jpeg", "image/jpeg")
    url = store.url("t/round-001/c/gradcam_class_2.jpg")
    assert "X-Amz-Expires=1&" in url
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(url, timeout=10)
    raised.value.close()
    assert raised.value.code == 403


def test_wrong_credentials_fail_with_a_clear_error(nanio_endpoint: str) -> None:
    store = S3Store(s3_settings(nanio_endpoint, new_bucket(), secret_key="not-the-secret"))
    with pytest.raises(StoreMisconfigured, match=r"refused.*FEDXAI_S3_SECRET_KEY") as raised:
        store.check()
    assert "not-the-secret" not in str(raised.value)


def test_unreachable_server_is_reported_as_unavailable() -> None:
    settings = S3Settings(endpoint=f"127.0.0.1:{free_port()}", access_key="a", secret_key="b")
    with pytest.raises(StoreUnavailable, match="cannot reach S3"):
        S3Store(settings).check()


def test_a_hung_server_is_unavailable_after_the_timeout() -> None:
    """A server that accepts connections and never answers: the call gives up after
    FEDXAI_S3_TIMEOUT, once, instead of waiting three times a minute."""
    connections: list[socket.socket] = []

    def accept_and_stay_silent(listener: socket.socket) -> None:
        while True:
            try:
                connections.append(listener.accept()[0])
            except OSError:  # the listener was closed
                return

    with socket.create_server(("127.0.0.1", 0)) as hung:
        threading.Thread(target=accept_and_stay_silent, args=(hung,), daemon=True).start()
        port = hung.getsockname()[1]
        settings = S3Settings(endpoint=f"127.0.0.1:{port}", access_key="a", secret_key="b", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"cannot reach S3.*Read timed out"):
            S3Store(settings).put("t/x.json", b"{}", "application/json")
        assert time.monotonic() - started < 15  # 180 s with the old three 60-second tries
    assert len(connections) == 1, "a request that timed out was sent again"
    for connection in connections:
        connection.close()


class ResettingRelay:
    """A TCP relay on loopback in front of an S3 server that resets a connection when told,
    on the next request it carries: what a client sees when a server has dropped a pooled
    keep-alive connection, or a busy one resets it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.resets_due = 0
        self.resets = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset_next_request(self) -> None:
        with self.lock:
            self.resets_due += 1

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # the listener was closed
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _take_reset(self) -> bool:
        with self.lock:
            if not self.resets_due:
                return False
            self.resets_due -= 1
            self.resets += 1
            return True

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._take_reset():
                    # Linger 0: close() sends a RST, not a FIN.
                    source.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                sink.sendall(data)
        except OSError:  # the other direction closed both sockets
            pass
        source.close()
        sink.close()


def test_a_connection_the_server_resets_is_tried_again_on_a_new_one(nanio_endpoint: str) -> None:
    """The store check that decides an explainer's health, a write and a read each meet a
    reset connection once, and succeed on a new one."""
    relay = ResettingRelay(nanio_endpoint)
    try:
        store = S3Store(s3_settings(relay.endpoint, new_bucket()))
        store.check()
        relay.reset_next_request()
        store.check(create=False)
        relay.reset_next_request()
        store.put("t/x.json", b'{"a": 1}', "application/json")
        relay.reset_next_request()
        assert store.get("t/x.json") == b'{"a": 1}'
        assert relay.resets == 3
    finally:
        relay.close()


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_a_bad_s3_timeout_is_named(value: str) -> None:
    env = {"FEDXAI_S3_ENDPOINT": "127.0.0.1:9", "FEDXAI_S3_ACCESS_KEY": "a", "FEDXAI_S3_SECRET_KEY": "b"}
    with pytest.raises(SettingsError, match=f"FEDXAI_S3_TIMEOUT='{value}'"):
        StorageSettings.from_env({**env, "FEDXAI_S3_TIMEOUT": value})
    assert StorageSettings.from_env(env).s3.timeout == 8.0  # type: ignore[union-attr]
