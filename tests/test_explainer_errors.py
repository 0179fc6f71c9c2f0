"""Bad input gets the right status code and a message naming the field; the
server keeps serving and stores nothing for the failed call."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest
import torch

from fedxai.models import architectures
from fedxai.settings import ExplainerSettings
from fedxai.storage import LocalStore
from fedxai.tensors import encode_state_dict, tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.explainer.server import create_server
from tests.conftest import CHANNEL_OPTIONS
from tests.helpers import explain_request, png

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def cifar_weights() -> bytes:
    return encode_state_dict(architectures()["cifar10_cnn"].factory().state_dict(), {})


def nan_weights(weights: bytes) -> bytes:
    from safetensors.torch import load

    state = load(weights)
    state["fc2.bias"][0] = float("nan")
    return encode_state_dict(state, {})


def float_tensor(values: np.ndarray) -> pb.Tensor:
    return tensor_to_proto(values.astype(np.float32))


# (test id, change to a good request, status code, text the message must hold)
BAD_REQUESTS = [
    (
        "4-D shape",
        lambda r, w: r.tensor.ClearField("shape") or r.tensor.shape.extend([4, 784]),
        INVALID,
        "tensor.shape: [4, 784] is not 4-D NCHW",
    ),
    (
        "wrong size",
        lambda r, w: r.tensor.CopyFrom(tensor_to_proto(np.zeros((4, 1, 32, 32), np.uint8))),
        INVALID,
        "tensor.shape: [4, 1, 32, 32] does not match mnist_cnn input [N, 1, 28, 28]",
    ),
    (
        "byte count",
        lambda r, w: setattr(r.tensor, "data", r.tensor.data[:-1]),
        INVALID,
        "tensor.data: 3135 bytes",
    ),
    ("dtype", lambda r, w: setattr(r.tensor, "dtype", pb.DTYPE_UNSPECIFIED), INVALID, "tensor.dtype"),
    (
        "NaN pixels",
        lambda r, w: r.tensor.CopyFrom(float_tensor(np.full((4, 1, 28, 28), np.nan))),
        INVALID,
        "tensor.data: contains NaN or Inf",
    ),
    (
        "Inf pixels",
        lambda r, w: r.tensor.CopyFrom(float_tensor(np.full((4, 1, 28, 28), np.inf))),
        INVALID,
        "tensor.data: contains NaN or Inf",
    ),
    (
        "normalised pixels",
        lambda r, w: r.tensor.CopyFrom(float_tensor(np.full((4, 1, 28, 28), -0.42))),
        INVALID,
        "tensor.data: float32 pixels must lie in [0, 1]",
    ),
    ("too few labels", lambda r, w: r.labels.pop(), INVALID, "labels: 3 labels for 4 samples"),
    ("label range", lambda r, w: r.labels.__setitem__(0, 10), INVALID, "labels: 10 is outside [0, 10)"),
    ("negative label", lambda r, w: r.labels.__setitem__(0, -1), INVALID, "labels: -1 is outside"),
    (
        "architecture",
        lambda r, w: setattr(r.inline_model, "architecture", "resnet9000"),
        INVALID,
        "inline_model.architecture: unknown architecture 'resnet9000' (known: cifar10_cnn, mnist_cnn, tiny_rgb_net)",
    ),
    (
        "too few class names",
        lambda r, w: r.class_names.extend(["T-shirt", "Trouser"]),
        INVALID,
        "class_names: 2 names for the 10 classes of mnist_cnn",
    ),
    (
        "class name with a control character",
        lambda r, w: r.class_names.extend([*map(str, range(3)), "three\x1b[2J", *map(str, range(4, 10))]),
        INVALID,
        "class_names[3]: must be 1 to 40 printable characters, not all spaces",
    ),
    (
        "class name too long",
        lambda r, w: r.class_names.extend([*map(str, range(9)), "n" * 41]),
        INVALID,
        "class_names[9]: must be 1 to 40 printable characters",
    ),
    ("method", lambda r, w: setattr(r, "method", 42), INVALID, "method: unknown CAM method 42"),
    ("target", lambda r, w: setattr(r, "target", 9), INVALID, "target: unknown target class mode 9"),
    (
        "layer",
        lambda r, w: setattr(r, "target_layer", "conv7"),
        INVALID,
        "target_layer: no targetable layer 'conv7' (targetable: relu1, relu2, pool)",
    ),
    (
        "layer not spatial",
        lambda r, w: setattr(r, "target_layer", "fc1"),
        INVALID,
        "target_layer: no targetable layer 'fc1'",
    ),
    (
        "auto without scores",
        lambda r, w: (setattr(r, "method", pb.CAM_METHOD_AUTO), setattr(r, "scoring", pb.SCORING_SKIP)),
        INVALID,
        "scoring: CAM_METHOD_AUTO chooses by the scores",
    ),
    ("scoring", lambda r, w: setattr(r, "scoring", 9), INVALID, "scoring: unknown scoring mode 9"),
    (
        "scores after an unstored reply",
        lambda r, w: (setattr(r, "scoring", pb.SCORING_AFTER_REPLY), setattr(r, "store", False)),
        INVALID,
        "scoring: SCORING_AFTER_REPLY needs store",
    ),
    (
        "weights of another model",
        lambda r, w: setattr(r.inline_model, "safetensors", cifar_weights()),
        INVALID,
        "inline_model.safetensors: weights do not fit mnist_cnn",
    ),
    (
        "missing tensor",
        lambda r, w: setattr(r.inline_model, "safetensors", w[:-4]),
        INVALID,
        "inline_model.safetensors: not valid safetensors",
    ),
    (
        "pickle bytes",
        lambda r, w: setattr(r.inline_model, "safetensors", b"\x80\x04\x95" + b"\x00" * 64),
        INVALID,
        "inline_model.safetensors: not valid safetensors",
    ),
    (
        "empty weights",
        lambda r, w: setattr(r.inline_model, "safetensors", b""),
        INVALID,
        "inline_model.safetensors: is empty",
    ),
    (
        "NaN weights",
        lambda r, w: setattr(r.inline_model, "safetensors", nan_weights(w)),
        INVALID,
        "inline_model.safetensors: tensor fc2.bias contains NaN or Inf",
    ),
    ("no model", lambda r, w: r.ClearField("inline_model"), INVALID, "model: set inline_model or model_ref"),
    ("no samples", lambda r, w: r.ClearField("tensor"), INVALID, "samples: set tensor or images"),
    (
        "empty batch",
        lambda r, w: r.tensor.CopyFrom(tensor_to_proto(np.zeros((0, 1, 28, 28), np.uint8))),
        INVALID,
        "tensor.shape: empty batch",
    ),
    ("empty image list", lambda r, w: r.images.SetInParent(), INVALID, "images.images: empty batch"),
    (
        "undecodable image",
        lambda r, w: r.images.images.extend([b"GIF89a not really"] * 4),
        INVALID,
        "images.images[0]: is neither PNG nor JPEG, the formats the explainer decodes",
    ),
    (
        "image size",
        lambda r, w: r.images.images.extend(
            [png(np.zeros((28, 28), np.uint8))] * 3 + [png(np.zeros((30, 28), np.uint8))]
        ),
        INVALID,
        "images.images[3]: is 28x30, mnist_cnn takes 28x28",
    ),
    ("task id", lambda r, w: setattr(r, "task_id", "../etc"), INVALID, "task_id: '../etc' is not a valid id"),
    ("client id", lambda r, w: setattr(r, "client_id", ""), INVALID, "client_id: '' is not a valid id"),
    (
        "normalisation length",
        lambda r, w: r.normalization.mean.extend([0.1, 0.2]),
        INVALID,
        "normalization.mean: has 2 values; give 1 or 1",
    ),
    (
        "zero std",
        lambda r, w: r.normalization.std.append(0.0),
        INVALID,
        "normalization.std: values must lie in [1e-06, 1e+06]",
    ),
    (
        "denormal std",
        lambda r, w: r.normalization.std.append(1e-45),
        INVALID,
        "normalization.std: values must lie in [1e-06, 1e+06]",
    ),
    (
        "huge mean",
        lambda r, w: r.normalization.mean.append(1e38),
        INVALID,
        "normalization.mean: values must lie in [-1e+06, 1e+06]",
    ),
    (
        "missing checkpoint",
        lambda r, w: r.model_ref.CopyFrom(pb.ModelRef(key="xaitest/round-009/global_model.safetensors")),
        grpc.StatusCode.NOT_FOUND,
        "model_ref.key: no checkpoint at 'xaitest/round-009/global_model.safetensors'",
    ),
    (
        "checkpoint hash malformed",
        lambda r, w: r.model_ref.CopyFrom(pb.ModelRef(key="xaitest/round-001/global_model.safetensors", sha256="abc")),
        INVALID,
        "model_ref.sha256: is not 64 lowercase hex digits",
    ),
    (
        "checkpoint key escapes",
        lambda r, w: r.model_ref.CopyFrom(pb.ModelRef(key="../../etc/passwd")),
        INVALID,
        "model_ref.key: '../../etc/passwd' is not a valid object key",
    ),
    (
        "batch over the limit",
        lambda r, w: r.tensor.CopyFrom(tensor_to_proto(np.zeros((300, 1, 28, 28), np.uint8))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "tensor.shape: batch of 300 samples is over the limit of 256",
    ),
]


@pytest.fixture
def good_request(mnist, mnist_weights) -> pb.ExplainRequest:
    images, labels = mnist
    return explain_request(images[:4], labels[:4], mnist_weights)


@pytest.mark.parametrize(("change", "code", "message"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_refused_with_the_field_named(
    stub, local_store: LocalStore, good_request, mnist_weights, change, code, message
):
    bad = pb.ExplainRequest()
    bad.CopyFrom(good_request)
    change(bad, mnist_weights)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(bad, timeout=30)
    assert raised.value.code() == code
    assert message in raised.value.details()
    assert local_store.list() == [], "nothing may be stored for a refused request"
    # The server keeps serving.
    assert len(stub.Explain(good_request, timeout=30).images) > 0


def test_checkpoint_without_architecture_metadata_asks_for_one(stub, local_store, good_request, trained_mnist_cnn):
    local_store.put(
        "xaitest/round-001/global_model.safetensors",
        encode_state_dict(trained_mnist_cnn.state_dict(), {}),
        "application/octet-stream",
    )
    good_request.model_ref.CopyFrom(pb.ModelRef(key="xaitest/round-001/global_model.safetensors"))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(good_request, timeout=30)
    assert raised.value.code() == INVALID
    assert "model_ref.architecture: not given, and the checkpoint's metadata names none" in raised.value.details()
    good_request.model_ref.architecture = "mnist_cnn"
    assert len(stub.Explain(good_request, timeout=30).samples) == 4


def test_checkpoint_that_changed_since_it_was_named_is_refused(stub, local_store, good_request, mnist_weights):
    key = "xaitest/round-001/global_model.safetensors"
    local_store.put(key, mnist_weights, "application/octet-stream")
    actual = hashlib.sha256(mnist_weights).hexdigest()
    named = pb.ExplainRequest()
    named.CopyFrom(good_request)
    named.model_ref.CopyFrom(pb.ModelRef(key=key, sha256="0" * 64))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(named, timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"model_ref.sha256: the checkpoint's SHA-256 is {actual}, not {'0' * 64}" in raised.value.details()
    assert [info.key for info in local_store.list()] == [key], "nothing may be stored for a refused request"
    named.model_ref.sha256 = actual
    assert stub.Explain(named, timeout=30).model_sha256 == actual


def test_message_over_the_size_limit_is_refused_and_the_server_goes_on(tmp_path, good_request):
    running = create_server(
        ExplainerSettings(address="127.0.0.1:0", max_message_bytes=1024 * 1024), LocalStore(tmp_path)
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}", options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            big = pb.ExplainRequest()
            big.CopyFrom(good_request)  # the 4.6 MiB model alone is over 1 MiB
            with pytest.raises(grpc.RpcError) as raised:
                stub.Explain(big, timeout=30)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.GetInfo(pb.GetInfoRequest(), timeout=10).max_message_bytes == 1024 * 1024
    finally:
        running.stop(grace=None)


def test_unexpected_errors_become_internal_without_details(stub, good_request, monkeypatch):
    from services.explainer.cam.grad_cam import GradCAM

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(GradCAM, "compute", broken)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(good_request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "secret detail" not in raised.value.details()
    monkeypatch.undo()
    assert len(stub.Explain(good_request, timeout=30).samples) == 4


def test_list_explanations_refuses_bad_ids(stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListExplanations(pb.ListExplanationsRequest(task_id="a/../b"), timeout=10)
    assert raised.value.code() == INVALID
    assert "task_id: 'a/../b' is not a valid id" in raised.value.details()


def test_state_dict_with_integer_tensors_is_refused(stub, good_request, trained_mnist_cnn):
    state = {k: v.clone() for k, v in trained_mnist_cnn.state_dict().items()}
    state["fc2.bias"] = torch.zeros(10, dtype=torch.int64)
    good_request.inline_model.safetensors = encode_state_dict(state, {})
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(good_request, timeout=30)
    assert raised.value.code() == INVALID
    assert "tensor fc2.bias has dtype torch.int64" in raised.value.details()
