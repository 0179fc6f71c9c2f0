"""The trainer's side of the Explainer: deadlines, the outbox, and nothing lost."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from fedxai.data import Dataset
from fedxai.delivery import Outbox, deliver
from fedxai.models import architectures
from fedxai.tensors import encode_state_dict
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.trainer.explainer_link import build_request, samples_per_class
from tests.conftest import free_port
from tests.helpers import RUN, RUN_DIR

ARCH = architectures()["mnist_cnn"]


@pytest.fixture
def validation(mnist) -> Dataset:
    images, labels = mnist
    return Dataset(images[:200], labels[:200])


def request_for(round_number: int, model, validation: Dataset, per_class: int = 2) -> pb.ExplainRequest:
    return build_request(
        task_id="xaitest",
        run_id=RUN,
        round_number=round_number,
        client_id="client-0",
        arch=ARCH,
        model=model,
        data=validation,
        per_class=per_class,
        cam_method="CAM_METHOD_GRAD_CAM",
    )


def test_samples_per_class_takes_the_first_of_each_class():
    labels = np.array([3, 1, 3, 1, 3, 2])
    assert samples_per_class(labels, 2).tolist() == [0, 1, 2, 3, 5]


def test_request_carries_samples_of_every_class_and_safetensors_weights(trained_mnist_cnn, validation):
    request = request_for(4, trained_mnist_cnn, validation, per_class=3)
    assert (request.task_id, request.round, request.client_id, request.store) == ("xaitest", 4, "client-0", True)
    assert list(request.tensor.shape) == [30, 1, 28, 28]
    assert sorted(set(request.labels)) == list(range(10))
    assert request.inline_model.safetensors[8:].startswith(b'{"__metadata__":{"architecture":"mnist_cnn"}')


def test_delivered_when_the_explainer_is_up(explainer, local_store, trained_mnist_cnn, validation, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    delivery = deliver(f"127.0.0.1:{explainer.port}", 30, outbox, request_for(1, trained_mnist_cnn, validation))
    assert (delivery.sent, delivery.stored, delivery.queued, delivery.rejected) == (1, 10, 0, 0)
    assert local_store.exists(f"{RUN_DIR}/round-001/client-0/gradcam_class_9.jpg")
    assert outbox.pending() == []


def test_sent_naming_the_checkpoint_when_there_is_one(explainer, local_store, trained_mnist_cnn, validation, tmp_path):
    # A checkpoint with other bytes than the inline weights: the manifest shows which was explained.
    checkpoint = encode_state_dict(trained_mnist_cnn.state_dict(), {"architecture": ARCH.name, "round": "1"})
    local_store.put(f"{RUN_DIR}/round-001/global_model.safetensors", checkpoint, "application/octet-stream")
    reference = pb.ModelRef(
        key=f"{RUN_DIR}/round-001/global_model.safetensors",
        architecture=ARCH.name,
        sha256=hashlib.sha256(checkpoint).hexdigest(),
    )
    outbox = Outbox(tmp_path / "outbox")
    request = request_for(1, trained_mnist_cnn, validation)
    delivery = deliver(f"127.0.0.1:{explainer.port}", 30, outbox, request, checkpoint=reference)
    assert (delivery.sent, delivery.stored, delivery.queued, delivery.rejected) == (1, 10, 0, 0)
    manifest = json.loads(local_store.get(f"{RUN_DIR}/round-001/client-0/explanations.json"))
    assert {entry["model_sha256"] for entry in manifest["images"]} == {reference.sha256}


@pytest.mark.parametrize("stored", [False, True], ids=["missing", "changed"])
def test_weights_are_sent_when_the_checkpoint_cannot_be_used(
    explainer, local_store, trained_mnist_cnn, validation, tmp_path, stored
):
    key = f"{RUN_DIR}/round-001/global_model.safetensors"
    if stored:  # since overwritten, say by a later run of the same task
        local_store.put(key, encode_state_dict(trained_mnist_cnn.state_dict(), {}), "application/octet-stream")
    outbox = Outbox(tmp_path / "outbox")
    request = request_for(1, trained_mnist_cnn, validation)
    reference = pb.ModelRef(key=key, architecture=ARCH.name, sha256="0" * 64)
    delivery = deliver(f"127.0.0.1:{explainer.port}", 30, outbox, request, checkpoint=reference)
    assert (delivery.sent, delivery.stored, delivery.queued, delivery.rejected) == (1, 10, 0, 0)
    manifest = json.loads(local_store.get(f"{RUN_DIR}/round-001/client-0/explanations.json"))
    inline_sha256 = hashlib.sha256(request.inline_model.safetensors).hexdigest()
    assert {entry["model_sha256"] for entry in manifest["images"]} == {inline_sha256}


def test_queued_while_down_then_delivered_oldest_first(explainer, local_store, trained_mnist_cnn, validation, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    first = request_for(1, trained_mnist_cnn, validation)
    checkpoint = pb.ModelRef(key=f"{RUN_DIR}/round-001/global_model.safetensors", sha256="0" * 64)
    down = deliver(f"127.0.0.1:{free_port()}", 5, outbox, first, checkpoint=checkpoint)
    assert (down.sent, down.queued) == (0, 1)
    (queued,) = outbox.pending()
    # Protobuf on disk, not pickle; with the weights, so it needs no checkpoint later.
    assert pb.ExplainRequest.FromString(queued.read_bytes()) == first

    up = deliver(f"127.0.0.1:{explainer.port}", 30, outbox, request_for(2, trained_mnist_cnn, validation))
    assert (up.sent, up.stored, up.queued) == (2, 20, 0)
    manifests = [info.key for info in local_store.list("xaitest/") if info.key.endswith("explanations.json")]
    assert manifests == [
        f"{RUN_DIR}/round-001/client-0/explanations.json",
        f"{RUN_DIR}/round-002/client-0/explanations.json",
    ]


def test_malformed_request_is_set_aside_with_the_reason(explainer, trained_mnist_cnn, validation, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    bad = request_for(1, trained_mnist_cnn, validation)
    bad.labels.append(3)
    delivery = deliver(f"127.0.0.1:{explainer.port}", 30, outbox, bad)
    assert (delivery.sent, delivery.queued, delivery.rejected) == (0, 0, 1)
    reason = (tmp_path / "outbox" / "rejected" / f"xaitest-{RUN}-round-001-client-0.pb.reason.txt").read_text()
    assert "INVALID_ARGUMENT: labels: 21 labels for 20 samples" in reason


class _Stalling(pb_grpc.ExplainerServicer):
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def Explain(self, request, context):  # noqa: N802
        self.release.wait(10)
        return pb.ExplainResponse()


def test_a_stalled_explainer_costs_at_most_the_deadline(trained_mnist_cnn, validation, tmp_path):
    release = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    pb_grpc.add_ExplainerServicer_to_server(_Stalling(release), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        outbox = Outbox(tmp_path / "outbox")
        delivery = deliver(f"127.0.0.1:{port}", 0.5, outbox, request_for(1, trained_mnist_cnn, validation))
        assert (delivery.sent, delivery.queued) == (0, 1)
    finally:
        release.set()
        server.stop(None)


def test_a_request_the_explainer_cannot_take_is_set_aside_not_retried_forever(
    explainer, local_store, trained_mnist_cnn, mnist, tmp_path
):
    images, labels = mnist
    many = Dataset(images[:2000], labels[:2000])
    outbox = Outbox(tmp_path / "outbox")
    too_big = request_for(1, trained_mnist_cnn, many, per_class=30)  # 300 samples, the server takes 256
    delivery = deliver(f"127.0.0.1:{explainer.port}", 30, outbox, too_big)
    assert (delivery.sent, delivery.queued, delivery.rejected) == (0, 0, 1)
    after = deliver(f"127.0.0.1:{explainer.port}", 30, outbox, request_for(2, trained_mnist_cnn, many))
    assert (after.sent, after.queued) == (1, 0)


def test_an_unreadable_outbox_file_is_set_aside(explainer, trained_mnist_cnn, validation, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    outbox.directory.mkdir(parents=True)
    (outbox.directory / f"xaitest-{RUN}-round-001-client-0.pb").write_bytes(b"\xff\xff not protobuf")
    delivery = deliver(f"127.0.0.1:{explainer.port}", 30, outbox, request_for(2, trained_mnist_cnn, validation))
    assert (delivery.sent, delivery.queued) == (1, 0)
    assert (outbox.directory / "rejected" / f"xaitest-{RUN}-round-001-client-0.pb").exists()
