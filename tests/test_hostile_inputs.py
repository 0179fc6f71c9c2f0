"""Requests built to cost the explainer as much as possible, sent to a real
server on loopback: each is refused with the right status code and a bounded
message that names the field, before the expensive work, and the explainer
keeps serving."""

from __future__ import annotations

import io
import json
import threading
import time

import grpc
import numpy as np
import PIL.Image
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedxai.errors import InvalidArgument, ResourceExhausted
from fedxai.settings import ExplainerSettings
from fedxai.storage import LocalStore
from fedxai.tensors import encode_state_dict
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.explainer.budget import MemoryBudget, estimated_bytes
from services.explainer.server import create_server
from tests.conftest import CHANNEL_OPTIONS
from tests.helpers import RUN_DIR, explain_request, inflating_png, png, safetensors_with_header


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def images_request(mnist, images: list[bytes], **fields: object) -> pb.ExplainRequest:
    _, labels = mnist
    request = explain_request(np.zeros((1, 28, 28), np.uint8), labels[:1], b"", **fields)
    request.ClearField("tensor")
    request.images.images.extend(images)
    del request.labels[:]
    request.labels.extend([int(label) for label in labels[: len(images)]])
    return request


def refused(stub: pb_grpc.ExplainerStub, request: pb.ExplainRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(request, timeout=60)
    return raised.value


def test_a_png_that_inflates_to_a_gigabyte_is_refused_before_decoding(stub, mnist, mnist_weights, local_store):
    bomb = inflating_png(28, 28, 1 << 30)
    assert len(bomb) < 2 << 20, "about 1 MB on the wire"
    request = images_request(mnist, [png(mnist[0][0]), bomb])
    request.inline_model.CopyFrom(pb.InlineModel(architecture="mnist_cnn", safetensors=mnist_weights))
    started = time.monotonic()
    error = refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "images.images[1]: its pixel data inflates beyond the 28x28 image it declares"
    assert time.monotonic() - started < 30  # decoding the gigabyte took minutes of CPU before
    assert local_store.list() == []


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP", "PPM"])
def test_only_png_and_jpeg_are_decoded(stub, mnist, mnist_weights, fmt):
    request = images_request(mnist, [encoded(mnist[0][0], fmt)])
    request.inline_model.CopyFrom(pb.InlineModel(architecture="mnist_cnn", safetensors=mnist_weights))
    error = refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "images.images[0]: is neither PNG nor JPEG, the formats the explainer decodes"


def test_a_png_header_of_a_giant_image_is_invalid_not_internal(stub, mnist, mnist_weights):
    giant = inflating_png(20000, 20000, 16)
    request = images_request(mnist, [giant])
    request.inline_model.CopyFrom(pb.InlineModel(architecture="mnist_cnn", safetensors=mnist_weights))
    error = refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "images.images[0]: declares an image far larger than 28x28"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "inline_model.safetensors: its header nests deeper than safetensors does"),
        (
            json.dumps(
                {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(5000)}
            ).encode(),
            "inline_model.safetensors: 5000 tensors, more than the 1024 a model may have",
        ),
        (b"{" * 10, "inline_model.safetensors: not valid safetensors (its header is not JSON)"),
    ],
    ids=["deep-json", "many-tensors", "broken-json"],
)
def test_hostile_safetensors_headers_are_refused_before_loading(stub, mnist, header, message):
    images, labels = mnist
    weights = safetensors_with_header(header) + b"\0" * 20_000
    error = refused(stub, explain_request(images[:2], labels[:2], weights))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


def test_a_stored_checkpoint_with_a_deep_header_is_invalid_too(stub, mnist, local_store):
    images, labels = mnist
    key = f"{RUN_DIR}/round-001/global_model.safetensors"
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000  # valid JSON, 100,000 objects deep
    local_store.put(key, safetensors_with_header(deep), "application/octet-stream")
    request = explain_request(images[:2], labels[:2], b"", model_ref=pb.ModelRef(key=key, architecture="mnist_cnn"))
    error = refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "model_ref.key: its header nests deeper than safetensors does"


def test_huge_repeated_fields_are_refused_before_they_are_converted(stub, mnist, mnist_weights):
    images, labels = mnist
    request = explain_request(images[:2], labels[:2], mnist_weights)
    del request.labels[:]
    request.labels.extend(np.zeros(2_000_000, np.int32).tolist())
    error = refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "labels: 2000000 labels for 2 samples"

    request = explain_request(images[:2], labels[:2], mnist_weights)
    request.normalization.mean.extend(np.zeros(1_000_000, np.float32).tolist())
    error = refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "normalization.mean: has 1000000 values; give 1 or 1"


def test_error_messages_are_bounded_and_name_the_field(stub, mnist, mnist_weights):
    images, labels = mnist
    error = refused(stub, explain_request(images[:2], labels[:2], mnist_weights, client_id="x/" * 50_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, "not RESOURCE_EXHAUSTED from oversized metadata"
    assert error.details().startswith("client_id: 'x/x/x/") and len(error.details()) <= 300


def test_health_answers_while_every_worker_explains(local_store, mnist, mnist_weights):
    server = create_server(ExplainerSettings(address="127.0.0.1:0", workers=1), local_store)
    images, labels = mnist
    slow = explain_request(images[:64], labels[:64], mnist_weights, scoring=pb.SCORING_IN_REPLY)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            calls = [threading.Thread(target=stub.Explain, args=(slow,), kwargs={"timeout": 300}) for _ in range(3)]
            for call in calls:
                call.start()
            time.sleep(1.0)  # the one worker explains, two calls wait
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(5):
                started = time.monotonic()
                reply = health.Check(health_pb2.HealthCheckRequest(service="fedxai.v1.Explainer"), timeout=2)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                assert time.monotonic() - started < 1.0
            assert stub.GetInfo(pb.GetInfoRequest(), timeout=2).max_batch_size > 0
            for call in calls:
                call.join()
    finally:
        server.stop(grace=None)


def test_a_model_whose_outputs_overflow_is_refused(stub, mnist, trained_mnist_cnn, local_store):
    images, labels = mnist
    state = {name: value.clone() for name, value in trained_mnist_cnn.state_dict().items()}
    for name in ("conv1.weight", "conv2.weight"):
        state[name] *= 1e20  # finite weights, activations beyond float32
    weights = encode_state_dict(state, {})
    error = refused(stub, explain_request(images[:8], labels[:8], weights))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("model: its outputs for these samples are not finite")
    assert local_store.list() == []


def test_calls_share_a_memory_budget(local_store, mnist, mnist_weights):
    images, labels = mnist
    half = explain_request(images[:256], labels[:256], mnist_weights, scoring=pb.SCORING_SKIP)
    # Room for one 256-sample call (about 280 MB by the estimate), not two, nor a 512-sample one.
    budget = estimated_bytes(half, 512) * 3 // 2
    settings = ExplainerSettings(address="127.0.0.1:0", memory_budget_bytes=budget, max_batch_size=512)
    server = create_server(settings, local_store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            error = refused(stub, explain_request(images[:512], labels[:512], mnist_weights))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.details().startswith("explainer: this call needs about") and "fewer samples" in error.details()
            replies: list[pb.ExplainResponse] = []
            calls = [
                threading.Thread(target=lambda r: replies.append(stub.Explain(r, timeout=300)), args=(request,))
                for request in (
                    half,
                    explain_request(images[:256], labels[:256], mnist_weights, round=2, scoring=pb.SCORING_SKIP),
                )
            ]
            for call in calls:
                call.start()
            for call in calls:
                call.join()
            assert len(replies) == 2, "the second call waited for room instead of failing"
    finally:
        server.stop(grace=None)


def test_a_call_that_finds_no_room_in_time_is_refused():
    budget = MemoryBudget(100)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with budget.reserve(80, wait_seconds=1):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    started = time.monotonic()
    with pytest.raises(ResourceExhausted, match="taken by other calls"), budget.reserve(30, wait_seconds=0.3):
        pass
    assert 0.25 < time.monotonic() - started < 2
    waiter_done = threading.Event()

    def wait_for_room() -> None:
        with budget.reserve(30, wait_seconds=10):
            waiter_done.set()

    waiter = threading.Thread(target=wait_for_room)
    waiter.start()
    time.sleep(0.2)
    assert not waiter_done.is_set() and budget.used == 80
    release.set()
    waiter.join(10)
    holder.join(10)
    assert waiter_done.is_set() and budget.used == 0


def test_the_explainer_keeps_serving_after_all_of_them(stub, mnist, mnist_weights, local_store):
    images, labels = mnist
    for bad in (inflating_png(28, 28, 1 << 26), encoded(images[0], "BMP")):
        request = images_request(mnist, [bad])
        request.inline_model.CopyFrom(pb.InlineModel(architecture="mnist_cnn", safetensors=mnist_weights))
        assert refused(stub, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = stub.Explain(explain_request(images[:8], labels[:8], mnist_weights), timeout=60)
    assert len(reply.images) == len(set(labels[:8].tolist()))
    assert local_store.exists(reply.manifest_key)


def test_the_local_store_never_leaves_its_root(tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not yours")
    store = LocalStore(tmp_path / "store")
    store.check()
    (tmp_path / "store" / "task").mkdir()
    (tmp_path / "store" / "task" / "link.txt").symlink_to(secret)
    (tmp_path / "store" / "dir").symlink_to(secret.parent, target_is_directory=True)
    for key in ("task/link.txt", "dir/secret.txt"):
        with pytest.raises(InvalidArgument, match="leads outside the store"):
            store.get(key)
        assert not store.exists(key)
    with pytest.raises(InvalidArgument, match=r"'dir/planted\.txt' leads outside the store"):
        store.put("dir/planted.txt", b"x", "text/plain")
    assert [info.key for info in store.list()] == []
    assert not (secret.parent / "planted.txt").exists()
