"""The aggregator's explanations: the probe set, the global model and client
updates explained by a real Explainer on loopback, compared, and a misbehaving
client flagged; requests wait in the outbox while the Explainer is away."""

from __future__ import annotations

import json
from collections.abc import Iterator

import cv2
import grpc
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedxai.attacks import BACKDOOR_SHARE, BACKDOOR_TARGET, TRIGGER, poison
from fedxai.data import Dataset, Pool, probe_set
from fedxai.models import architectures
from fedxai.settings import ExplainerSettings
from fedxai.storage import LocalStore
from fedxai.storage.layout import Folder
from fedxai.task import TaskConfig
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.aggregator import comparison
from services.aggregator.comparison import compare_round, map_distances, robust_z, weight_outliers
from services.aggregator.probe import ProbeExplainer, RoundMaps
from services.aggregator.recorder import RunRecorder
from services.explainer.server import create_server
from tests.conftest import CHANNEL_OPTIONS, free_port
from tests.helpers import (
    RUN,
    RUN_DIR,
    TRAINED_ON,
    decode_jpeg,
    digits_pool,
    explain_request,
    perturbed,
    task_config,
    with_flipped_outputs,
)

ARCH = architectures()["mnist_cnn"]
HONEST = ("client-0", "client-1", "client-2")
FLIPPED = "client-3"


def held_out(mnist: tuple[np.ndarray, np.ndarray]) -> Dataset:
    images, labels = mnist
    return Dataset(images[TRAINED_ON:], labels[TRAINED_ON:])


@pytest.fixture(scope="module")
def updates(trained_mnist_cnn: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    found = {client: perturbed(trained_mnist_cnn, seed) for seed, client in enumerate(HONEST)}
    found[FLIPPED] = with_flipped_outputs(trained_mnist_cnn)
    return found


def task_for(port: int) -> TaskConfig:
    return task_config(explainer_address=f"127.0.0.1:{port}", explainer_timeout=30.0)


class Recorded:
    """The comparisons the probe explainer hands over, by round."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict] = {}

    def __call__(self, round_number: int, comparison: dict) -> None:
        self.rounds.setdefault(round_number, {}).update(comparison)


def test_the_probe_set_is_fixed_and_balanced(mnist):
    data = digits_pool(held_out(mnist))
    probe = probe_set(data, "", 8, seed=42)
    assert len(probe) == 80
    assert np.bincount(probe.labels).tolist() == [8] * 10
    again = probe_set(data, "", 8, seed=42)
    assert np.array_equal(probe.images, again.images), "the same images every round"
    assert not np.array_equal(probe_set(data, "", 8, seed=7).images, probe.images)


def test_a_folder_of_class_images_is_a_probe_set(tmp_path, mnist):
    images, labels = mnist
    for index in range(30):
        folder = tmp_path / "probe" / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / f"{index}.png"), images[index])
    probe = probe_set(digits_pool(held_out(mnist)), str(tmp_path / "probe"), 2, seed=0)
    assert sorted(set(probe.labels.tolist())) == sorted(set(labels[:30].tolist()))
    assert all(count <= 2 for count in np.bincount(probe.labels))
    for image, label in zip(probe.images, probe.labels, strict=True):  # each one read back as it was written
        assert any(np.array_equal(image[0], images[i]) for i in range(30) if labels[i] == label)

    # Another size is resized; a folder named by the class works as one named by the label.
    (tmp_path / "probe" / "3").mkdir(exist_ok=True)
    assert cv2.imwrite(str(tmp_path / "probe" / "3" / "big.png"), np.full((56, 56, 3), 255, np.uint8))
    pool = Pool(
        held_out(mnist),
        held_out(mnist),
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    )
    (tmp_path / "probe" / "3").rename(tmp_path / "probe" / "three")
    probe = probe_set(pool, str(tmp_path / "probe"), 64, seed=0)
    big = probe.images[(probe.images == 255).all(axis=(1, 2, 3))]
    assert big.shape == (1, 1, 28, 28) and 3 in probe.labels
    (tmp_path / "probe" / "thirty").mkdir()
    assert cv2.imwrite(str(tmp_path / "probe" / "thirty" / "x.png"), images[0])
    with pytest.raises(ValueError, match="'thirty' is not one of the dataset's classes"):
        probe_set(pool, str(tmp_path / "probe"), 2, seed=0)
    with pytest.raises(FileNotFoundError, match="no IDX files and no images in class folders"):
        probe_set(pool, str(tmp_path / "probe" / "thirty"), 2, seed=0)


def test_attacks_change_only_what_they_say(mnist):
    images, labels = mnist
    data = Dataset(images[:2000], labels[:2000])
    flipped = poison(data, "label-flip", seed=0)
    assert np.array_equal(flipped.labels[data.labels == 7], np.ones((data.labels == 7).sum()))
    assert np.array_equal(flipped.labels[data.labels == 1], np.full((data.labels == 1).sum(), 7))
    others = ~np.isin(data.labels, (1, 7))
    assert np.array_equal(flipped.labels[others], data.labels[others])
    assert np.array_equal(flipped.images, data.images)

    backdoored = poison(data, "backdoor", seed=0)
    stamped = np.flatnonzero((backdoored.images != data.images).any(axis=(1, 2, 3)))
    assert len(stamped) == pytest.approx(BACKDOOR_SHARE * len(data), abs=1)
    assert (backdoored.images[stamped][..., TRIGGER[0], TRIGGER[1]] == 255).all()
    assert (backdoored.labels[stamped] == BACKDOOR_TARGET).all()
    untouched = np.setdiff1d(np.arange(len(data)), stamped)
    assert np.array_equal(backdoored.labels[untouched], data.labels[untouched])


def test_map_distances_read_as_documented():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 49))
    assert map_distances(maps, maps) == pytest.approx(np.zeros(3))
    assert map_distances(maps, -maps) == pytest.approx(np.full(3, 2.0))  # reversed ranking
    blank = np.zeros((1, 49))
    assert map_distances(blank, blank)[0] == 0.0, "two all-zero maps agree"
    assert map_distances(blank, maps[:1])[0] == 1.0, "an all-zero map is unrelated to any other"


def test_robust_z_and_the_flag_need_three_clients():
    z = robust_z({"a": 0.10, "b": 0.12, "c": 0.11, "d": 0.9}, floor=0.05)
    assert z["d"] > 10 and max(z["a"], z["b"], z["c"]) < 1
    # Clients that agree exactly: the floor keeps a tiny difference small.
    assert robust_z({"a": 0.1, "b": 0.1, "c": 0.12}, floor=0.05)["c"] == pytest.approx(0.4)

    labels = np.repeat(np.arange(2), 4)
    rng = np.random.default_rng(1)
    base = rng.random((8, 49))
    two = compare_round(labels, {"a": base, "b": base[::-1]}, None, None, threshold=3.5)
    assert two["flagged"] == [] and all("z_score" not in figures for figures in two["clients"].values())
    assert "distance_to_clients" in two["clients"]["a"], "distances are measured with two clients"


def test_weight_updates_far_from_the_others_stand_out():
    rng = np.random.default_rng(2)
    direction = rng.normal(size=1000)
    updates = {f"client-{i}": direction + 0.3 * rng.normal(size=1000) for i in range(4)}
    updates["client-4"] = -direction
    figures = weight_outliers(updates, threshold=3.5)
    assert figures["client-4"]["flagged"] and figures["client-4"]["distance"] > 1.5
    assert not any(figures[f"client-{i}"]["flagged"] for i in range(4))


@pytest.mark.parametrize("count", range(2, 12))
@pytest.mark.parametrize("size", [300, 2 * comparison.BLOCK + 37])
def test_the_weight_distance_uses_the_median_of_the_others(count, size):
    """The order-statistics shortcut gives what a median of the n - 1 others gives,
    on continuous data and on data full of ties, within a block of coordinates and
    across several."""
    rng = np.random.default_rng(count)
    for updates in (
        {f"c{i}": rng.normal(size=size).astype(np.float32) for i in range(count)},
        {f"c{i}": rng.integers(-1, 2, size=size).astype(np.float32) for i in range(count)},
    ):
        figures = weight_outliers(updates, threshold=3.5)
        for name, update in updates.items():
            others = np.median(np.stack([u for other, u in updates.items() if other != name]), axis=0)
            norms = np.linalg.norm(update) * np.linalg.norm(others)
            expected = 1.0 - float(update @ others) / norms if norms > 0 else 1.0
            assert figures[name]["distance"] == pytest.approx(expected, abs=2e-5)


@pytest.fixture(scope="module")
def explained_round(
    tmp_path_factory, mnist, updates, trained_mnist_cnn
) -> Iterator[tuple[LocalStore, pb_grpc.ExplainerStub]]:
    """Round 1 as the aggregator sees it: the updates and the global model explained
    on the probe set by a real Explainer, compared and recorded in metrics.json."""
    root = tmp_path_factory.mktemp("federation")
    store = LocalStore(root / "store")
    store.check()
    server = create_server(ExplainerSettings(address="127.0.0.1:0"), store)
    task = task_for(server.port)
    probe = probe_set(digits_pool(held_out(mnist)), "", 8, seed=42)
    recorder = RunRecorder(store, task, ARCH, held_out(mnist))
    maps = RoundMaps(probe.labels, task.flag_threshold, recorder.record_comparison)
    prober = ProbeExplainer(task, ARCH, probe, root / "aggregator", maps)
    global_state = trained_mnist_cnn.state_dict()
    try:
        prober.explain_updates(1, updates)
        recorder.evaluate_global(1, ArrayRecord(global_state))
        recorder.settle()  # the global model's test runs in the background
        prober.explain_global(1, global_state, recorder.checkpoint(1, ArrayRecord(global_state)))
        assert prober.close() == 0, "nothing left in the outbox"
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
            yield store, pb_grpc.ExplainerStub(channel)
    finally:
        server.stop(grace=None)


def test_a_client_with_flipped_outputs_is_flagged_by_its_explanations(explained_round, updates):
    store, _ = explained_round
    document = json.loads(store.get(f"{RUN_DIR}/metrics.json"))
    comparison = document["rounds"][-1]["comparison"]
    assert comparison["flagged"] == [FLIPPED]
    flipped = comparison["clients"][FLIPPED]
    assert flipped["flagged"] and flipped["flag_classes"] and set(flipped["flag_classes"]) <= {1, 7}
    for client in HONEST:
        assert not comparison["clients"][client]["flagged"], comparison["clients"][client]
        # An honest update explains the digits as the global model does; the flipped one does not.
        assert comparison["clients"][client]["distance_to_global"]["7"] < flipped["distance_to_global"]["7"]
    assert comparison["method"] == "HiResCAM" and comparison["target_layer"] == "relu2"

    # Stored where the layout says, each class with its picture.
    folders = (Folder("xaitest", RUN, 1, "global"), *(Folder("xaitest", RUN, 1, "update", c) for c in updates))
    for folder in folders:
        manifest = json.loads(store.get(folder.manifest_key))
        assert manifest["subject"] == folder.subject
        assert [entry["label"] for entry in manifest["images"]] == list(range(10))
        for entry in manifest["images"]:
            assert entry["key"].startswith(folder.prefix + "/gradcam_class_")
            assert decode_jpeg(store.get(entry["key"])).shape[1] > 28


def test_listing_filters_by_subject_and_carries_the_comparisons(explained_round, updates):
    _, stub = explained_round

    def listed(*subjects: int) -> list[pb.StoredExplanation]:
        request = pb.ListExplanationsRequest(task_id="xaitest", subjects=subjects)
        return list(stub.ListExplanations(request).explanations)

    of_updates, of_global = listed(pb.SUBJECT_CLIENT_UPDATE), listed(pb.SUBJECT_GLOBAL_MODEL)
    assert {entry.subject for entry in of_updates} == {pb.SUBJECT_CLIENT_UPDATE}
    assert {entry.client_id for entry in of_updates} == set(updates)
    assert len(listed()) == len(of_updates) + len(of_global) == 50
    flipped = {entry.label: entry.comparison for entry in of_updates if entry.client_id == FLIPPED}
    assert flipped[7].HasField("distance_to_global") and flipped[7].HasField("z_score")
    assert any(comparison.flagged for comparison in flipped.values())
    assert not any(entry.comparison.flagged for entry in of_updates if entry.client_id != FLIPPED)
    assert {entry.client_id for entry in of_global} == {""}
    assert not of_global[0].comparison.HasField("drift"), "round 1 has no previous global model"
    with pytest.raises(grpc.RpcError) as refused:
        listed(7)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "subjects: unknown subject 7" in refused.value.details()


def test_requests_wait_in_the_outbox_while_the_explainer_is_away(mnist, updates, trained_mnist_cnn, tmp_path):
    store = LocalStore(tmp_path / "store")
    store.check()
    port = free_port()
    task = task_for(port)
    probe = probe_set(digits_pool(held_out(mnist)), "", 4, seed=42)
    recorded = Recorded()
    prober = ProbeExplainer(task, ARCH, probe, tmp_path / "aggregator", RoundMaps(probe.labels, 3.5, recorded))
    global_state = trained_mnist_cnn.state_dict()
    for future in prober.explain_updates(1, updates):
        future.result()
    prober.explain_global(1, global_state, (f"{RUN_DIR}/round-001/global_model.safetensors", "0" * 64)).result()
    queued = sorted(path.name for path in prober.outbox.pending())
    assert queued == [
        f"xaitest-{RUN}-round-001-global.pb",
        *(f"xaitest-{RUN}-round-001-update-{client}.pb" for client in sorted(updates)),
    ]
    assert recorded.rounds == {}

    server = create_server(ExplainerSettings(address=f"127.0.0.1:{port}"), store)
    try:
        # Round 2's first request takes the backlog along, oldest first.
        prober.explain_updates(2, {"client-0": updates["client-0"]})[0].result()
        assert prober.close() == 0
    finally:
        server.stop(grace=None)
    assert prober.outbox.pending() == []
    assert recorded.rounds[1]["flagged"] == [FLIPPED]
    assert set(recorded.rounds[2]["clients"]) == {"client-0"}
    assert store.exists(f"{RUN_DIR}/round-001/global/explanations.json")
    assert store.exists(f"{RUN_DIR}/round-001/updates/{FLIPPED}/explanations.json")


def test_a_request_is_on_disk_once_handed_over_and_the_next_aggregator_sends_it(mnist, trained_mnist_cnn, tmp_path):
    """An aggregator that dies with requests waiting for its lane loses none: each is in
    the outbox from the moment it is handed over, and the next aggregator sends it."""
    store = LocalStore(tmp_path / "store")
    store.check()
    port = free_port()
    task = task_for(port)
    probe = probe_set(digits_pool(held_out(mnist)), "", 4, seed=42)
    maps = RoundMaps(probe.labels, 3.5, Recorded())
    first = ProbeExplainer(task, ARCH, probe, tmp_path / "aggregator", maps)
    checkpoint = (f"{RUN_DIR}/round-001/global_model.safetensors", "0" * 64)
    handed = first.explain_global(1, trained_mnist_cnn.state_dict(), checkpoint)
    assert [path.name for path in first.outbox.pending()] == [f"xaitest-{RUN}-round-001-global.pb"]
    handed.result()
    assert first.close() == 1, "the explainer is away: it stays"

    server = create_server(ExplainerSettings(address=f"127.0.0.1:{port}"), store)
    try:
        assert ProbeExplainer(task, ARCH, probe, tmp_path / "aggregator", maps).close() == 0
    finally:
        server.stop(grace=None)
    manifest = json.loads(store.get(f"{RUN_DIR}/round-001/global/explanations.json"))
    assert [image["label"] for image in manifest["images"]] == list(range(10))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"client_id": "global"}, "client_id: 'global' is reserved"),
        ({"client_id": "updates"}, "client_id: 'updates' is reserved"),
        ({"client_id": "client-0", "subject": pb.SUBJECT_GLOBAL_MODEL}, "client_id: must be empty"),
        ({"client_id": "", "subject": pb.SUBJECT_CLIENT_UPDATE}, "client_id: '' is not a valid id"),
        ({"subject": 9}, "subject: unknown subject 9"),
    ],
)
def test_the_layout_cannot_be_confused_by_a_caller(stub, mnist, mnist_weights, local_store, fields, message):
    images, labels = mnist
    request = explain_request(images[:8], labels[:8], mnist_weights, **fields)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Explain(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()
    assert list(local_store.list()) == [], "nothing is stored for a refused call"
    # The service keeps serving.
    assert stub.Explain(explain_request(images[:8], labels[:8], mnist_weights)).images


def test_manifest_keys_parse_back_to_their_folder():
    for folder in (
        Folder("t", "r1", 3, "client", "client-0"),
        Folder("t", "r1", 3, "global"),
        Folder("t", "r1", 12, "update", "client-9"),
        Folder("t", "", 3, "client", "me"),
        Folder("t", "", 4, "update", "client-1"),
    ):
        assert Folder.of_manifest(folder.manifest_key) == folder
    assert Folder("t", "r1", 12, "update", "client-9").prefix == "t/runs/r1/round-012/updates/client-9"
    assert Folder("t", "", 3, "client", "me").prefix == "t/adhoc/round-003/me"
    for key in (
        "t/runs/r1/round-001/updates/explanations.json",
        "t/runs/r1/x/c/explanations.json",
        "t/runs/r1/round-001/c/other.json",
        "t/round-001/c/explanations.json",  # the layout before runs
        "t/runs/round-001/c/explanations.json",
        "t/adhoc/r1/round-001/c/explanations.json",
    ):
        assert Folder.of_manifest(key) is None, key
