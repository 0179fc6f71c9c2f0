"""Nothing half-stored, nothing lost: a real explainer whose store fails under it
(a real S3 server killed and restarted, a server that never answers, a folder that
refuses a file), and callers that give up before their turn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedxai.delivery import Outbox, deliver
from fedxai.settings import ExplainerSettings, S3Settings
from fedxai.storage import LocalStore, ObjectStore, read_document
from fedxai.storage.s3 import S3Store
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.explainer.server import RunningServer, create_server
from tests.conftest import CHANNEL_OPTIONS, free_port, s3_settings, start_nanio
from tests.helpers import RUN_DIR, explain_request, unlisted_pictures

SERVICE = "fedxai.v1.Explainer"


@pytest.fixture(scope="module")
def request_of(mnist, mnist_weights):
    images, labels = mnist

    def build(round_number: int = 1, count: int = 64, **fields: object) -> pb.ExplainRequest:
        return explain_request(images[:count], labels[:count], mnist_weights, round=round_number, **fields)

    return build


def serve(store: ObjectStore) -> RunningServer:
    return create_server(ExplainerSettings(address="127.0.0.1:0", store_check_seconds=0.3), store)


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    server = request.getfixturevalue("server")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as opened:
        yield opened


def health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def wait_for_health(channel: grpc.Channel, status: int, within: float = 10.0) -> float:
    started = time.monotonic()
    while health(channel) != status:
        assert time.monotonic() - started < within, f"health never became {status}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_file_the_store_refuses_leaves_nothing_of_the_call(request_of, tmp_path):
    store = LocalStore(tmp_path / "store")
    store.check()
    server = serve(store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            # A folder where class 5's picture goes: that one upload fails, the others succeed.
            (tmp_path / "store" / RUN_DIR / "round-002/client-0/gradcam_class_5.jpg").mkdir(parents=True)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Explain(request_of(2), timeout=60)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "gradcam_class_5.jpg" in raised.value.details()
            assert [info.key for info in store.list(f"{RUN_DIR}/round-002/")] == []

            # A resent call that fails keeps what the manifest there lists, and the manifest.
            first = stub.Explain(request_of(3), timeout=60)
            manifest = store.get(first.manifest_key)
            pictures = {key: store.get(key) for key in (image.key for image in first.images)}
            (tmp_path / "store" / RUN_DIR / "round-003/client-0/gradcam_class_5.jpg").unlink()
            (tmp_path / "store" / RUN_DIR / "round-003/client-0/gradcam_class_5.jpg").mkdir()
            with pytest.raises(grpc.RpcError):
                stub.Explain(request_of(3), timeout=60)
            assert store.get(first.manifest_key) == manifest
            assert {info.key for info in store.list(f"{RUN_DIR}/round-003/")} == set(pictures) - {
                f"{RUN_DIR}/round-003/client-0/gradcam_class_5.jpg"
            } | {first.manifest_key}
            assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=None)


def test_s3_killed_mid_run_then_back_loses_nothing(request_of, tmp_path):
    port = free_port()
    nanio = start_nanio(port, tmp_path / "s3")
    store = S3Store(s3_settings(f"127.0.0.1:{port}", "fedxai-faults"))
    store.check()
    server = serve(store)
    outbox = Outbox(tmp_path / "outbox")
    address = f"127.0.0.1:{server.port}"
    try:
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            assert deliver(address, 60, outbox, request_of(1)).stored == 10

            # Killed while a call uploads its pictures.
            calls = threading.Thread(target=deliver, args=(address, 60, outbox, request_of(2, count=256)))
            calls.start()
            time.sleep(0.4)
            nanio.kill()
            nanio.wait()
            calls.join()
            assert deliver(address, 60, outbox, request_of(3)).queued == 2
            wait_for_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
            # While the store is away, a storing call fails at once, before any compute.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                pb_grpc.ExplainerStub(channel).Explain(request_of(4), timeout=60)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "last check" in raised.value.details()
            assert time.monotonic() - started < 2

            nanio = start_nanio(port, tmp_path / "s3")
            wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)
            delivered = deliver(address, 60, outbox)
            assert (delivered.sent, delivered.stored, delivered.queued) == (2, 20, 0)
            time.sleep(1)  # the watch removes what the failed upload could not
            for round_number in (1, 2, 3):
                manifest = read_document(store, f"{RUN_DIR}/round-{round_number:03d}/client-0/explanations.json")
                assert manifest is not None and len(manifest["images"]) == 10, round_number
            assert unlisted_pictures(store, f"{RUN_DIR}/") == []
            assert server.service.store_watch.leftovers == 0
    finally:
        server.stop(grace=None)
        nanio.kill()
        nanio.wait()


def test_a_hung_store_answers_unavailable_within_its_timeout(request_of):
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        endpoint = f"127.0.0.1:{hung.getsockname()[1]}"
        store = S3Store(S3Settings(endpoint=endpoint, access_key="a", secret_key="b", timeout=2.0))
        server = serve(store)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as raised:
                    pb_grpc.ExplainerStub(channel).Explain(request_of(1), timeout=60)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - started < 10
                wait_for_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
        finally:
            server.stop(grace=None)


def test_a_caller_gone_before_its_turn_stores_nothing(request_of, local_store):
    server = serve(local_store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            long_call = threading.Thread(target=stub.Explain, args=(request_of(1, count=256),), kwargs={"timeout": 120})
            long_call.start()
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Explain(request_of(2, client_id="client-1"), timeout=0.5)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            long_call.join()
            # Calls take the compute lane in turn: once a later call is answered, the
            # abandoned one has had its turn (and would have stored by the time this
            # one has computed and stored too).
            stub.Explain(request_of(3), timeout=120)
            time.sleep(0.5)
            assert local_store.list(f"{RUN_DIR}/round-001/") and local_store.list(f"{RUN_DIR}/round-003/")
            assert local_store.list(f"{RUN_DIR}/round-002/") == []
    finally:
        server.stop(grace=None)


def test_deleting_keeps_to_the_store(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    store.put("t/a.json", b"{}", "application/json")
    store.delete("t/a.json")
    store.delete("t/a.json")  # already gone: no error
    assert store.list() == []
