"""The Explainer over real gRPC on loopback, with real digits and a trained model."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedxai.storage import LocalStore
from fedxai.storage.layout import global_model_key
from fedxai.tensors import tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb
from services.explainer.explanations import pick_samples_per_class
from services.explainer.render import CAPTION_HEIGHT, GAP, SCALE
from tests.helpers import RUN, RUN_DIR, decode_jpeg, explain_request, png


@pytest.fixture
def digits(mnist):
    """64 real digits covering all ten classes."""
    images, labels = mnist
    assert set(labels[:64].tolist()) == set(range(10))
    return images[:64], labels[:64]


def test_explain_stores_one_image_per_class_and_a_manifest(stub, local_store: LocalStore, digits, mnist_weights):
    images, labels = digits
    response = stub.Explain(explain_request(images, labels, mnist_weights), timeout=60)

    assert response.method == "Grad-CAM" and response.target_layer == "relu2"
    assert len(response.samples) == 64
    accuracy = np.mean([s.predicted_class == s.true_label for s in response.samples])
    assert accuracy > 0.85, "the trained model should classify most digits"
    for sample in response.samples:
        assert sample.explained_class == sample.true_label
        assert (sample.cam_height, sample.cam_width) == (24, 24)
        assert len(sample.cam) == 24 * 24
        assert sample.cam_max == pytest.approx(max(sample.cam))
        assert sample.cam_mean == pytest.approx(np.mean(sample.cam), rel=1e-4)
        assert 0 < sample.probability <= 1

    assert sorted(image.label for image in response.images) == list(range(10))
    listed = {info.key for info in local_store.list(f"{RUN_DIR}/round-001/client-0/")}
    assert listed == {f"{RUN_DIR}/round-001/client-0/gradcam_class_{c}.jpg" for c in range(10)} | {
        f"{RUN_DIR}/round-001/client-0/explanations.json"
    }
    assert response.manifest_key == f"{RUN_DIR}/round-001/client-0/explanations.json"
    manifest = json.loads(local_store.get(response.manifest_key))
    assert [entry["label"] for entry in manifest["images"]] == list(range(10))
    for entry, image in zip(manifest["images"], response.images, strict=True):
        assert entry["key"] == image.key
        assert entry["sample_index"] == image.sample_index
        assert entry["method"] == "Grad-CAM" and entry["target_layer"] == "relu2"
        assert entry["model_sha256"] == response.model_sha256
        assert entry["cam_max"] == pytest.approx(response.samples[image.sample_index].cam_max)
        assert entry["created_at"]
        assert image.url == "" and image.jpeg == b""


def test_each_class_shows_its_most_confident_correct_sample(stub, digits, mnist_weights):
    images, labels = digits
    response = stub.Explain(explain_request(images, labels, mnist_weights, store=False), timeout=60)
    for image in response.images:
        candidates = [s for s in response.samples if s.true_label == image.label and s.predicted_class == image.label]
        best = max(candidates, key=lambda s: s.probability)
        assert image.sample_index == best.index
        assert image.predicted_class == image.label


def test_pick_falls_back_to_the_first_sample_when_none_is_correct():
    labels = np.array([3, 5, 3, 5])
    predicted = np.array([1, 5, 1, 2])
    probability = np.array([0.9, 0.6, 0.8, 0.99])
    assert pick_samples_per_class(labels, predicted, probability) == {3: 0, 5: 1}


def test_image_panels_show_original_heatmap_and_overlay(stub, local_store, digits, mnist_weights):
    images, labels = digits
    response = stub.Explain(explain_request(images, labels, mnist_weights), timeout=60)
    image = next(i for i in response.images if i.label == 7)
    picture = decode_jpeg(local_store.get(image.key))

    side = 28 * SCALE
    assert picture.shape == (CAPTION_HEIGHT + side, 3 * side + 2 * GAP, 3)
    panels = picture[CAPTION_HEIGHT:].astype(np.int16)
    original = panels[:, :side]
    heatmap = panels[:, side + GAP : 2 * side + GAP]
    overlay = panels[:, 2 * side + 2 * GAP :]

    # The original panel is the digit itself, grey, scaled up.
    digit = images[image.sample_index].astype(np.int16)
    shrunk = cv2.resize(original[..., 1].astype(np.uint8), (28, 28), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(np.int16) - digit).mean() < 6
    assert np.abs(original[..., 0] - original[..., 2]).max() < 30  # no colour
    # The heatmap is coloured (JET) and its hottest place is where the raw map is hot.
    assert np.abs(heatmap[..., 0] - heatmap[..., 2]).mean() > 40
    cam = np.array(response.samples[image.sample_index].cam).reshape(24, 24)
    peak_row, peak_col = np.unravel_index(np.argmax(cam), cam.shape)
    red = heatmap[..., 2] - heatmap[..., 0]
    hot_row, hot_col = np.unravel_index(np.argmax(cv2.blur(red.astype(np.float32), (9, 9))), red.shape)
    scale = side / 24
    # Red saturates along a stroke: the hottest place is one where the raw map is near its
    # peak, and the peak itself is drawn red.
    assert cam[min(int(hot_row / scale), 23), min(int(hot_col / scale), 23)] >= 0.7 * cam.max()
    assert red[int((peak_row + 0.5) * scale), int((peak_col + 0.5) * scale)] > 100
    # The overlay is the average of the two.
    assert np.abs(overlay - (original + heatmap) / 2).mean() < 8
    # The caption band is mostly white with dark text.
    band = picture[:CAPTION_HEIGHT]
    assert (band > 200).mean() > 0.8 and (band < 80).any()


def test_images_come_back_inline_when_not_stored(stub, local_store, digits, mnist_weights):
    images, labels = digits
    response = stub.Explain(explain_request(images[:5], labels[:5], mnist_weights, store=False), timeout=60)
    assert local_store.list() == []
    assert response.manifest_key == ""
    assert sorted(i.label for i in response.images) == sorted(set(labels[:5].tolist()))
    for image in response.images:
        assert image.key == ""
        assert decode_jpeg(image.jpeg).shape == (CAPTION_HEIGHT + 28 * SCALE, 3 * 28 * SCALE + 2 * GAP, 3)


def test_explain_from_png_images_and_a_stored_checkpoint(stub, local_store, digits, mnist_weights):
    images, labels = digits
    local_store.put(global_model_key("xaitest", RUN, 3), mnist_weights, "application/octet-stream")
    tensor_response = stub.Explain(explain_request(images[:10], labels[:10], mnist_weights, store=False), timeout=60)

    request = pb.ExplainRequest(
        task_id="xaitest",
        round=3,
        client_id="grpcurl",
        model_ref=pb.ModelRef(key=f"{RUN_DIR}/round-003/global_model.safetensors"),
        images=pb.EncodedImages(images=[png(image) for image in images[:10]]),
        labels=labels[:10].tolist(),
        store=True,
    )
    response = stub.Explain(request, timeout=60)
    assert response.model_sha256 == tensor_response.model_sha256
    for from_png, from_tensor in zip(response.samples, tensor_response.samples, strict=True):
        assert from_png.predicted_class == from_tensor.predicted_class
        np.testing.assert_allclose(from_png.cam, from_tensor.cam, rtol=1e-4, atol=1e-6)
    # A call that names no run is kept apart from every run.
    assert local_store.exists("xaitest/adhoc/round-003/grpcurl/explanations.json")
    assert not local_store.list(f"{RUN_DIR}/round-003/grpcurl/")


def test_a_checkpoint_named_with_its_hash_is_read_once(stub, local_store, digits, mnist_weights):
    images, labels = digits
    key = global_model_key("xaitest", RUN, 2)
    local_store.put(key, mnist_weights, "application/octet-stream")
    sha256 = hashlib.sha256(mnist_weights).hexdigest()
    named = explain_request(images, labels, mnist_weights, model_ref=pb.ModelRef(key=key, sha256=sha256))
    first = stub.Explain(named, timeout=60)
    assert first.model_sha256 == sha256

    # The explainer kept the decoded model: the same hash needs no read, even once
    # the object is gone, and gives the same maps. Without the hash, it must read.
    (local_store.root / key).unlink()
    again = stub.Explain(named, timeout=60)
    assert again.model_sha256 == sha256
    for a, b in zip(first.samples, again.samples, strict=True):
        assert a.cam == b.cam
    named.model_ref.sha256 = ""
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(named, timeout=60)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "name"),
    [
        (pb.CAM_METHOD_GRAD_CAM_PLUS_PLUS, "Grad-CAM++"),
        (pb.CAM_METHOD_HIRES_CAM, "HiResCAM"),
        (pb.CAM_METHOD_XGRAD_CAM, "XGrad-CAM"),
        (pb.CAM_METHOD_LAYER_CAM, "LayerCAM"),
    ],
)
def test_every_method_and_a_named_layer(stub, local_store, digits, mnist_weights, method, name):
    images, labels = digits
    request = explain_request(images[:20], labels[:20], mnist_weights, method=method, target_layer="conv1")
    response = stub.Explain(request, timeout=60)
    # conv1's output goes through relu1: it is explained after it.
    assert response.method == name and response.target_layer == "relu1"
    assert response.samples[0].cam_height == 26
    manifest = json.loads(local_store.get(response.manifest_key))
    assert {entry["method"] for entry in manifest["images"]} == {name}


def test_predicted_target_explains_the_predicted_class(stub, digits, mnist_weights):
    images, labels = digits
    request = explain_request(images, labels, mnist_weights, target=pb.TARGET_CLASS_PREDICTED, store=False)
    response = stub.Explain(request, timeout=60)
    assert all(s.explained_class == s.predicted_class for s in response.samples)


def test_three_channel_model_and_colour_pngs(stub, mnist):
    import torch

    from fedxai.models import architectures
    from fedxai.tensors import encode_state_dict

    torch.manual_seed(0)
    weights = encode_state_dict(architectures()["cifar10_cnn"].factory().state_dict(), {})
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    request = pb.ExplainRequest(
        inline_model=pb.InlineModel(architecture="cifar10_cnn", safetensors=weights),
        images=pb.EncodedImages(images=[png(image) for image in colour]),
        labels=[0, 1, 2, 3],
    )
    response = stub.Explain(request, timeout=60)
    assert [s.cam_height for s in response.samples] == [8] * 4
    assert len(response.images) == 4
    # The original panel shows the colours (BGR on disk, RGB on the wire, back to BGR for display).
    picture = decode_jpeg(response.images[0].jpeg)
    original = picture[CAPTION_HEIGHT : CAPTION_HEIGHT + 32 * SCALE, : 32 * SCALE]
    shrunk = cv2.resize(original, (32, 32), interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(shrunk - colour[response.images[0].sample_index]).mean() < 20


def test_a_second_call_keeps_classes_it_did_not_redraw(stub, local_store, digits, mnist_weights):
    images, labels = digits
    stub.Explain(explain_request(images, labels, mnist_weights), timeout=60)
    only_sevens = labels == 7
    stub.Explain(explain_request(images[only_sevens], labels[only_sevens], mnist_weights), timeout=60)
    manifest = json.loads(local_store.get(f"{RUN_DIR}/round-001/client-0/explanations.json"))
    assert [entry["label"] for entry in manifest["images"]] == list(range(10))


def test_list_explanations_filters_by_task_round_and_client(stub, digits, mnist_weights):
    images, labels = digits
    for round_number, client in [(1, "client-0"), (1, "client-1"), (2, "client-0")]:
        stub.Explain(
            explain_request(images[:12], labels[:12], mnist_weights, round=round_number, client_id=client),
            timeout=60,
        )
    stub.Explain(explain_request(images[:12], labels[:12], mnist_weights, task_id="other"), timeout=60)
    classes = len(set(labels[:12].tolist()))

    def keys(**filters):
        response = stub.ListExplanations(pb.ListExplanationsRequest(**filters), timeout=10)
        return [e.key for e in response.explanations]

    assert len(keys()) == 4 * classes
    assert len(keys(task_id="xaitest")) == 3 * classes
    assert len(keys(task_id="xaitest", round=1)) == 2 * classes
    assert len(keys(task_id="xaitest", client_id="client-0")) == 2 * classes
    assert len(keys(task_id="xaitest", round=2, client_id="client-0")) == classes
    assert keys(task_id="xaitest", round=7) == []
    assert keys(task_id="missing") == []
    listed = stub.ListExplanations(pb.ListExplanationsRequest(task_id="xaitest", round=2), timeout=10).explanations
    assert {(e.task_id, e.round, e.client_id, e.method) for e in listed} == {("xaitest", 2, "client-0", "Grad-CAM")}


def test_class_names_of_the_call_go_into_the_manifest_and_the_listing(stub, local_store, digits, mnist_weights):
    images, labels = digits
    names = ["nought", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    request = explain_request(images[:20], labels[:20], mnist_weights)
    request.class_names.extend(names)
    manifest = json.loads(local_store.get(stub.Explain(request, timeout=60).manifest_key))
    for entry in manifest["images"]:
        assert entry["class_name"] == names[entry["label"]]
        assert entry["predicted_class_name"] == names[entry["predicted_class"]]
        assert entry["key"].endswith(f"gradcam_class_{entry['label']}.jpg"), "file names keep the label"
    listed = stub.ListExplanations(pb.ListExplanationsRequest(task_id="xaitest"), timeout=10).explanations
    assert {(e.label, e.class_name) for e in listed} == {(e["label"], e["class_name"]) for e in manifest["images"]}
    # Without names, the architecture's: the digit itself for mnist_cnn.
    stub.Explain(explain_request(images[:20], labels[:20], mnist_weights, round=2), timeout=60)
    listed = stub.ListExplanations(pb.ListExplanationsRequest(task_id="xaitest", round=2), timeout=10).explanations
    assert {e.class_name for e in listed} == {str(e.label) for e in listed}


def test_get_info_describes_methods_architectures_and_limits(stub):
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert "CAM_METHOD_GRAD_CAM" in info.methods and "CAM_METHOD_LAYER_CAM" in info.methods
    mnist_arch = next(a for a in info.architectures if a.name == "mnist_cnn")
    assert list(mnist_arch.input_shape) == [1, 28, 28]
    assert mnist_arch.default_target_layer == "relu2"
    assert list(mnist_arch.target_layers) == ["relu1", "relu2", "pool"]
    assert "CAM_METHOD_AUTO" in info.methods
    assert info.max_message_bytes == 16 * 1024 * 1024
    assert info.max_batch_size == 256
    assert info.storage == "local"


def test_health_service_reports_serving(explainer):
    with grpc.insecure_channel(f"127.0.0.1:{explainer.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "fedxai.v1.Explainer"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_concurrent_explains_with_different_models_do_not_mix(stub, digits, mnist_weights):
    import torch

    from fedxai.models import architectures
    from fedxai.tensors import encode_state_dict

    images, labels = digits
    torch.manual_seed(5)
    untrained = encode_state_dict(architectures()["mnist_cnn"].factory().state_dict(), {})
    requests = {
        "trained": explain_request(images[:16], labels[:16], mnist_weights, store=False),
        "untrained": explain_request(images[:16], labels[:16], untrained, store=False),
    }
    expected = {name: stub.Explain(r, timeout=60) for name, r in requests.items()}
    order = ["trained", "untrained"] * 6
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda name: (name, stub.Explain(requests[name], timeout=60)), order))
    for name, response in results:
        for got, want in zip(response.samples, expected[name].samples, strict=True):
            np.testing.assert_allclose(got.cam, want.cam, rtol=1e-4, atol=1e-7)


def test_uint8_and_float32_tensors_give_the_same_maps(stub, digits, mnist_weights):
    images, labels = digits
    as_uint8 = stub.Explain(explain_request(images[:8], labels[:8], mnist_weights, store=False), timeout=60)
    floats = tensor_to_proto((images[:8, None] / 255.0).astype(np.float32))
    as_float = stub.Explain(
        explain_request(images[:8], labels[:8], mnist_weights, store=False, tensor=floats), timeout=60
    )
    for a, b in zip(as_uint8.samples, as_float.samples, strict=True):
        np.testing.assert_allclose(a.cam, b.cam, rtol=1e-5, atol=1e-7)


def test_a_malformed_manifest_entry_is_skipped_not_fatal(stub, local_store, digits, mnist_weights):
    images, labels = digits
    stub.Explain(explain_request(images[:12], labels[:12], mnist_weights), timeout=60)
    key = f"{RUN_DIR}/round-001/client-0/explanations.json"
    manifest = json.loads(local_store.get(key))
    manifest["images"].append({"label": 99})  # no key, no metadata
    local_store.put(key, json.dumps(manifest).encode(), "application/json")
    local_store.put(f"{RUN_DIR}/round-002/client-0/explanations.json", b"{not json", "application/json")
    listed = stub.ListExplanations(pb.ListExplanationsRequest(task_id="xaitest"), timeout=10).explanations
    assert len(listed) == len(set(labels[:12].tolist()))
