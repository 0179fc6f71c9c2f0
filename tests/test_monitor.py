"""The monitoring page over a real HTTP server on loopback, with heatmaps made
by the explainer; checked with HTTP requests and in headless Chromium."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fedxai.data import Dataset, probe_set
from fedxai.models import architectures
from fedxai.storage import LocalStore
from fedxai.storage.layout import metrics_key
from fedxai.v1 import explainer_pb2 as pb
from services.aggregator.probe import RoundMaps, probe_request
from services.explainer.explanations import ExplanationService, Limits
from services.monitor.app import Monitor, create_app
from tests.helpers import (
    RUN,
    TRAINED_ON,
    decode_jpeg,
    digits_pool,
    explain_request,
    perturbed,
    serving,
    task_config,
    with_flipped_outputs,
)

ROUNDS, CLIENTS = (1, 2), ("client-0", "client-1")
OLD_RUN = "20261129-120000-0a0a"  # an earlier run of xaitest, metrics only
SCORED_RUN = "20261130-080000-5c5c"
FAILED_RUN, STALE_RUN = "20261130-070000-fa11", "20261130-060000-5a1e"  # task "troubled"
BIG_RUN = "20261130-050000-b19b"  # task "big": 10 clients x 50 rounds, made up
LIVE_RUN = "20261203-090000-11fe"  # task "live": in round 3, round 2's evaluation to come


def put_metrics(store: LocalStore, task: str, run: str, document: dict) -> None:
    defaults = {"task": task, "run_id": run, "started_at": "2026-11-30T05:00:00+00:00", "config": {}}
    store.put(metrics_key(task, run), json.dumps({**defaults, **document}).encode(), "application/json")


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory, mnist, mnist_weights, trained_mnist_cnn) -> LocalStore:
    """Two rounds of two clients' heatmaps made by the explainer, and the run's metrics.json."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    service = ExplanationService(store, Limits(64 << 20, 1024, cached_models=4))
    images, labels = mnist
    for round_number in ROUNDS:
        for client in CLIENTS:
            # client-0 explains other samples in round 2: the page must say so.
            start = 100 if (round_number, client) == (2, "client-0") else 0
            batch = slice(start, start + 64)
            request = explain_request(images[batch], labels[batch], mnist_weights, round=round_number, client_id=client)
            service.explain(request)
    # A call that names no run: it must not show in any run's gallery.
    service.explain(explain_request(images[:8], labels[:8], mnist_weights, run_id="", client_id="me"))
    service.close()
    rounds = [{"round": 0, "global": {"accuracy": 0.1, "loss": 2.3}}]
    for round_number in ROUNDS:
        clients = {
            c: {
                "train": {"train-loss": 0.5, "train-accuracy": 0.8, "num-examples": 100},
                "evaluate": {"eval-loss": 0.4, "eval-accuracy": 0.85, "num-examples": 25, "xai-stored": 10},
            }
            for c in CLIENTS
        }
        rounds.append(
            {
                "round": round_number,
                "global": {"accuracy": 0.8 + 0.05 * round_number, "loss": 0.6 - 0.1 * round_number},
                "evaluate": {"eval-accuracy": 0.82, "eval-loss": 0.5},
                "clients": clients,
                "xai": {"sent": 2, "stored": 20, "queued": 0, "rejected": 0},
            }
        )
    # Round 2 ran with fraction-explain=0.5: client-1 was not drawn to explain.
    rounds[2]["explaining"] = {"clients": 1, "of": 2, "fraction_explain": 0.5, "max_explained_clients": 10}
    rounds[2]["clients"]["client-1"]["evaluate"] = {"eval-loss": 0.4, "eval-accuracy": 0.85, "num-examples": 25}
    document = {
        "status": "finished",
        "num_rounds": 2,
        "updated_at": "2026-11-30T09:02:00+00:00",
        "started_at": "2026-11-30T09:00:00+00:00",
        "finished_at": "2026-11-30T09:02:05+00:00",
        "config": {
            "xai-enabled": True,
            "cam-method": "grad-cam",
            "samples-per-class": 4,
            "local-epochs": 1,
            "architecture": "mnist_cnn",
            "dataset": "mnist",
        },
        "rounds": [{**r, "seconds": 40.0 + r["round"]} if r["round"] else r for r in rounds],
    }
    put_metrics(store, "xaitest", RUN, document)
    older = [{"round": r, "global": {"accuracy": 0.5 + 0.1 * r, "loss": 1.0 - 0.2 * r}} for r in (0, 1, 2, 3)]
    put_metrics(store, "xaitest", OLD_RUN, {"status": "finished", "num_rounds": 3, "updated_at": "", "rounds": older})
    write_troubled_task(store)
    write_big_task(store)
    write_live_task(store)
    write_scored_task(store)
    write_federated_task(store, service_for(store), mnist, trained_mnist_cnn)
    return store


def service_for(store: LocalStore) -> ExplanationService:
    return ExplanationService(store, Limits(64 << 20, 1024, cached_models=4))


FEDERATED_CLIENTS = ("client-0", "client-1", "client-2", "client-3")  # client-3's outputs 1 and 7 are swapped


def write_federated_task(store: LocalStore, service: ExplanationService, mnist, model) -> None:
    """Task "federated": two rounds of the global model and four updates explained on
    a probe set by the explainer and compared as the aggregator does."""
    images, labels = mnist
    probe = probe_set(digits_pool(Dataset(images[TRAINED_ON:], labels[TRAINED_ON:])), "", 4, seed=42)
    task = task_config(task_name="federated")
    compared: dict[int, dict] = {}
    maps = RoundMaps(probe.labels, task.flag_threshold, lambda r, c: compared.setdefault(r, {}).update(c))
    arch = architectures()["mnist_cnn"]
    for round_number in ROUNDS:
        states = {c: perturbed(model, 10 * round_number + i) for i, c in enumerate(FEDERATED_CLIENTS[:3])}
        states["client-3"] = with_flipped_outputs(model)
        subjects = [(pb.SUBJECT_CLIENT_UPDATE, c, s) for c, s in states.items()]
        subjects.append((pb.SUBJECT_GLOBAL_MODEL, "", perturbed(model, round_number, 0.02)))
        for subject, client, state in subjects:
            request = probe_request(task, arch, probe, round_number, subject, client, state)
            maps.add(request, service.explain(request))
    service.close()
    rounds = [
        {"round": r, "global": {"accuracy": 0.9, "loss": 0.3}, "comparison": compared.get(r)} for r in (0, *ROUNDS)
    ]
    for entry in rounds[1:]:
        entry["excluded"] = ["client-3"]
    document = {
        "status": "finished",
        "num_rounds": 2,
        "updated_at": "2026-11-30T09:00:00+00:00",
        "rounds": rounds,
        "probe": {
            "source": "the aggregator's held-out split",
            "images": len(probe),
            "per_class": 4,
            "method": "hirescam",
            "distance": "1 - Spearman",
            "flag_threshold": 3.5,
            "exclude_flagged": True,
            "queued": 0,
        },
    }
    put_metrics(store, "federated", task.run_id, document)


METHODS = ("Grad-CAM", "Grad-CAM++", "HiResCAM", "XGrad-CAM", "LayerCAM")
SANITY = {
    "model_sha256": "0" * 64,
    "target_layer": "relu2",
    "randomised_layers": ["fc2", "fc1", "conv2"],
    "threshold": 0.5,
    "samples": 10,
    "methods": {
        "Grad-CAM": {"spearman": [0.61, 0.3, 0.1], "passed": True},
        "Grad-CAM++": {"spearman": [0.99, 0.95, 0.91], "passed": False},
        "HiResCAM": {"spearman": [0.9, 0.85, 0.78], "passed": False},
        "XGrad-CAM": {"spearman": [0.5, 0.3, 0.2], "passed": True},
        "LayerCAM": {"spearman": [0.7, 0.4, 0.3], "passed": True},
    },
}
SELECTION = {
    "rule": "largest deletion gap among methods that pass the sanity check",
    "method": "XGrad-CAM",
    "gap": 0.52,
    "passed_sanity": True,
    "runner_up": "Grad-CAM++",
    "margin": 0.04,
    "grad_cam_gap": 0.4,
}


def scores(gaps: dict[str, float], blank: bool = False) -> list[dict[str, object]]:
    return [
        {"method": m, "morf_auc": 0.4, "lerf_auc": round(0.4 + gaps[m], 4), "gap": gaps[m], "degenerate": blank}
        for m in METHODS
    ]


def old_entry(task: str, round_number: int, label: int) -> dict[str, object]:
    """A manifest entry with only the fields every explainer version wrote."""
    return {
        "key": f"{task}/runs/{SCORED_RUN}/round-{round_number:03d}/client-0/gradcam_class_{label}.jpg",
        "label": label,
        "sample_index": label,
        "predicted_class": label,
        "probability": 0.99,
        "explained_class": label,
        "method": "Grad-CAM",
        "target_layer": "relu2",
        "architecture": "mnist_cnn",
        "model_sha256": "0" * 64,
        "cam_max": 0.3,
        "cam_mean": 0.05,
        "degenerate": False,
        "created_at": "2025-01-01T00:00:00+00:00",
    }


SCORED = {  # label: the new fields of round 1's entry
    0: {
        "degenerate": True,
        "cam_max": 0.0,
        "weak": False,
        "faithfulness": scores(dict.fromkeys(METHODS, 0.0), True),
        "sanity_spearman": 0.1,
        "sanity_passed": True,
    },
    1: {
        "weak": True,
        "cam_max": 0.0012,
        "faithfulness": scores(dict.fromkeys(METHODS, 0.05)),
        "sanity_spearman": 0.1,
        "sanity_passed": True,
    },
    2: {
        "method": "HiResCAM",
        "predicted_class": 7,
        "weak": False,
        "faithfulness": scores({**dict.fromkeys(METHODS, 0.2), "HiResCAM": 0.31}),
        "sanity_spearman": 0.78,
        "sanity_passed": False,
    },
    3: {
        "method": "XGrad-CAM",
        "weak": False,
        "faithfulness": scores(
            {"Grad-CAM": 0.4, "Grad-CAM++": 0.48, "HiResCAM": 0.3, "XGrad-CAM": 0.52, "LayerCAM": 0.1}
        ),
        "sanity_spearman": 0.2,
        "sanity_passed": True,
        "selection": SELECTION,
    },
}


def write_scored_task(store: LocalStore) -> None:
    """Task "scored": round 1 with deletion scores, sanity checks and an automatic
    choice (one blank map, one weak, one failing the sanity check on a wrong
    prediction, one chosen by auto); round 2 from an explainer that wrote none of them."""
    for label in SCORED:
        jpeg = store.get(f"xaitest/runs/{RUN}/round-001/client-0/gradcam_class_{label}.jpg")
        for round_number in (1, 2):
            key = f"scored/runs/{SCORED_RUN}/round-{round_number:03d}/client-0/gradcam_class_{label}.jpg"
            store.put(key, jpeg, "image/jpeg")
    new = [{**old_entry("scored", 1, label), **fields} for label, fields in SCORED.items()]
    old = [old_entry("scored", 2, label) for label in SCORED]
    manifests = {
        1: {
            "task_id": "scored",
            "round": 1,
            "client_id": "client-0",
            "images": new,
            "replacement": "noisy linear imputation (ROAD)",
            "sanity": SANITY,
        },
        2: {"task_id": "scored", "round": 2, "client_id": "client-0", "images": old},
    }
    for round_number, manifest in manifests.items():
        key = f"scored/runs/{SCORED_RUN}/round-{round_number:03d}/client-0/explanations.json"
        store.put(key, json.dumps(manifest).encode(), "application/json")
    rounds = [{"round": r, "global": {"accuracy": 0.9, "loss": 0.3}} for r in (0, 1, 2)]
    document = {"status": "finished", "num_rounds": 2, "updated_at": "2026-11-30T08:00:00+00:00", "rounds": rounds}
    put_metrics(store, "scored", SCORED_RUN, document)


def write_troubled_task(store: LocalStore) -> None:
    """Task "troubled": a run that failed, and one whose aggregator vanished two hours ago."""
    rounds = [{"round": r, "global": {"accuracy": 0.9, "loss": 0.3}, "seconds": 30.0} for r in (0, 1)]
    failed = {"status": "failed", "reason": "RuntimeError: no trainer answered", "num_rounds": 3, "rounds": rounds}
    failed["resumed"] = [{"after_round": 1, "at": "2026-11-30T07:00:30+00:00"}]
    put_metrics(store, "troubled", FAILED_RUN, {**failed, "updated_at": "2026-11-30T07:01:00+00:00"})
    vanished = datetime.now(UTC) - timedelta(hours=2)
    stale = {"status": "running", "num_rounds": 3, "rounds": rounds, "updated_at": vanished.isoformat()}
    put_metrics(store, "troubled", STALE_RUN, stale)


BIG_CLIENTS, BIG_ROUNDS = [f"client-{i}" for i in range(10)], 50
LOW_CLIENT, SILENT = "client-7", ("client-9", 30)  # an accuracy outlier; a client that missed round 30
CRASHED = ("client-3", (49, 50))  # a client whose ClientApp crashed while training in these rounds


def write_big_task(store: LocalStore) -> None:
    """Task "big": 10 clients x 50 rounds of metrics, no heatmaps (XAI off)."""
    rounds: list[dict] = [{"round": 0, "global": {"accuracy": 0.1, "loss": 2.3}}]
    for r in range(1, BIG_ROUNDS + 1):
        clients = {}
        for i, client in enumerate(BIG_CLIENTS):
            accuracy = 0.62 if client == LOW_CLIENT else 0.95 + 0.001 * i
            train = {"train-loss": 0.2, "train-accuracy": accuracy, "num-examples": 500}
            clients[client] = {"train": train}
            if client == CRASHED[0] and r in CRASHED[1]:
                clients[client] = {"failed": {"train": "ClientApp stopped responding."}}
            if (client, r) != SILENT:
                clients[client]["evaluate"] = {
                    "eval-loss": 1 - accuracy,
                    "eval-accuracy": accuracy,
                    "num-examples": 100,
                }
        rounds.append(
            {"round": r, "global": {"accuracy": 0.88 + 0.0015 * r, "loss": 0.3}, "clients": clients, "seconds": 12.0}
        )
    config = {"xai-enabled": False}
    document = {"status": "finished", "num_rounds": BIG_ROUNDS, "updated_at": "", "rounds": rounds, "config": config}
    put_metrics(store, "big", BIG_RUN, document)


def write_live_task(store: LocalStore) -> None:
    """Task "live": a run in round 3 of 3 that recorded round 2, whose clients' evaluation
    comes with round 3's training (every node trains and evaluates every round)."""
    train = {"train-loss": 0.3, "train-accuracy": 0.9, "num-examples": 100}
    evaluation = {"eval-loss": 0.4, "eval-accuracy": 0.85, "num-examples": 25}
    rounds: list[dict] = [{"round": 0, "global": {"accuracy": 0.1, "loss": 2.3}}]
    rounds.append(
        {
            "round": 1, "global": {"accuracy": 0.8, "loss": 0.6}, "seconds": 15.0, "evaluated_in_round": 2,
            "evaluate": evaluation, "clients": {c: {"train": train, "evaluate": evaluation} for c in CLIENTS},
        }
    )  # fmt: skip
    rounds.append(
        {"round": 2, "global": {"accuracy": 0.85, "loss": 0.5}, "clients": {c: {"train": train} for c in CLIENTS}}
    )
    document = {
        "status": "running", "num_rounds": 3, "updated_at": datetime.now(UTC).isoformat(), "rounds": rounds,
        "config": {"xai-enabled": False},
    }  # fmt: skip
    put_metrics(store, "live", LIVE_RUN, document)


@pytest.fixture(scope="module")
def monitor_url(filled_store) -> Iterator[str]:
    with serving(create_app(filled_store)) as url:
        yield url


def get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("content-type", ""), error.read()


def test_index_lists_each_tasks_runs_newest_first(monitor_url):
    status, _, body = get(f"{monitor_url}/")
    assert status == 200
    dom = _Dom()
    dom.feed(body.decode())
    (runs,) = dom.nodes("table", **{"data-task": "xaitest"})
    rows = dom.nodes("tr", inside=runs)[1:]  # after the header
    assert [dom.elements[i][1]["data-run"] for i in rows] == [RUN, OLD_RUN]
    cells = [dom.text(c) for c in dom.nodes("td", inside=rows[0])]
    assert cells == [RUN, "finished", "2 / 2", "90.0%", "2026-11-30 09:00:00", "2 min 5 s", "41.5"]
    assert dom.find("a", href=f"/tasks/xaitest/runs/{RUN}")
    (troubled,) = dom.nodes("table", **{"data-task": "troubled"})
    states = {
        dom.elements[i][1]["data-run"]: dom.text(dom.nodes("td", inside=i)[1])
        for i in dom.nodes("tr", inside=troubled)[1:]
    }
    assert states == {FAILED_RUN: "failed", STALE_RUN: "stale"}
    assert dom.find("td", **{"class": "status-failed", "title": "RuntimeError: no trainer answered"})


def test_a_task_opens_on_its_newest_run(monitor_url):
    request = urllib.request.Request(f"{monitor_url}/tasks/xaitest")
    with urllib.request.urlopen(request, timeout=10) as response:  # follows the redirect
        assert response.url == f"{monitor_url}/tasks/xaitest/runs/{RUN}"
    status, _, body = get(f"{monitor_url}/api/tasks/xaitest/runs")
    assert status == 200 and [r["run"] for r in json.loads(body)] == [RUN, OLD_RUN]


def api(monitor_url: str, path: str) -> dict:
    status, kind, body = get(f"{monitor_url}/api/tasks/{path}")
    assert (status, kind) == (200, "application/json"), (path, status, body[:200])
    return json.loads(body)


def test_run_api_has_metrics_and_the_index_of_that_runs_pictures_only(monitor_url):
    document = api(monitor_url, f"xaitest/runs/{RUN}")
    assert [r["round"] for r in document["metrics"]["rounds"]] == [0, 1, 2]
    assert sorted(document["explained"]) == ["1", "2"]
    index = {"clients": list(CLIENTS), "global": False, "updates": []}
    assert document["explained"]["1"] == index, "the ad-hoc call's client 'me' is not in the run"
    summary = document["summary"]
    assert (summary["state"], summary["seconds_per_round"], summary["duration_seconds"]) == ("finished", 41.5, 125.0)
    assert "gallery" not in document, "the pictures come a round or a client at a time"
    assert api(monitor_url, f"xaitest/runs/{OLD_RUN}")["explained"] == {}


def test_a_rounds_and_a_clients_pictures(monitor_url):
    round_2 = api(monitor_url, f"xaitest/runs/{RUN}/rounds/2")
    assert sorted(round_2["gallery"]) == list(CLIENTS)
    assert len(round_2["gallery"]["client-1"]) == 10
    image = round_2["gallery"]["client-1"][7]
    assert image["key"] == f"xaitest/runs/{RUN}/round-002/client-1/gradcam_class_7.jpg"
    assert image["manifest"] == f"/manifests/xaitest/{RUN}/2/client-1"
    assert image["checkpoint"] == f"/checkpoints/xaitest/{RUN}/2"
    assert len(image["sample_sha256"]) == 64
    assert round_2["probe"] == {"global": None, "updates": {}}
    assert api(monitor_url, f"xaitest/runs/{RUN}/rounds/7")["gallery"] == {}

    history = api(monitor_url, f"xaitest/runs/{RUN}/clients/client-1")
    assert sorted(history["gallery"]) == ["1", "2"]
    assert history["gallery"]["2"] == round_2["gallery"]["client-1"]
    assert api(monitor_url, f"xaitest/runs/{RUN}/clients/me")["gallery"] == {}, "an ad-hoc call is not the run's"
    for path in (f"xaitest/runs/{RUN}/clients/..%2Fx", f"xaitest/runs/{RUN}/rounds/x", "xaitest/runs/nope/rounds/1"):
        assert get(f"{monitor_url}/api/tasks/{path}")[0] == 404


class CountingStore(LocalStore):
    """The real folder store, noting which objects are read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, key: str) -> bytes:
        self.reads.append(key)
        return super().get(key)


def test_a_poll_reads_only_the_manifests_written_since_the_last(filled_store, tmp_path):
    shutil.copytree(filled_store.root, tmp_path / "store")
    store = CountingStore(tmp_path / "store")
    monitor = Monitor(store)
    monitor.run("xaitest", RUN)
    assert not [key for key in store.reads if key.endswith("/explanations.json")], "the index needs only the keys"
    first = monitor.round_pictures("xaitest", RUN, 2)
    manifests = [key for key in store.reads if key.endswith("/explanations.json")]
    assert len(manifests) == len(CLIENTS)

    store.reads.clear()
    assert monitor.round_pictures("xaitest", RUN, 2) == first
    assert not [key for key in store.reads if key.endswith("/explanations.json")]

    key = f"xaitest/runs/{RUN}/round-002/client-1/explanations.json"
    manifest = json.loads(store.get(key))
    manifest["images"] = manifest["images"][:3]
    store.put(key, json.dumps(manifest).encode(), "application/json")
    store.reads.clear()
    assert len(monitor.round_pictures("xaitest", RUN, 2)["gallery"]["client-1"]) == 3
    assert [k for k in store.reads if k.endswith("/explanations.json")] == [key]


def test_the_run_api_is_compressed_for_browsers(monitor_url):
    request = urllib.request.Request(
        f"{monitor_url}/api/tasks/xaitest/runs/{RUN}/rounds/2", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        compressed = response.read()
    document = json.loads(gzip.decompress(compressed))
    assert len(compressed) * 4 < len(json.dumps(document)), (len(compressed), len(json.dumps(document)))


def test_each_picture_links_to_its_manifest(monitor_url, filled_store):
    status, kind, body = get(f"{monitor_url}/manifests/xaitest/{RUN}/2/client-1")
    assert status == 200 and kind == "application/json"
    manifest = json.loads(body)
    assert (manifest["run_id"], manifest["round"], manifest["client_id"]) == (RUN, 2, "client-1")
    assert get(f"{monitor_url}/checkpoints/xaitest/{RUN}/2")[0] == 404, "this run stored no checkpoint"
    filled_store.put(f"xaitest/runs/{RUN}/round-002/global_model.safetensors", b"weights", "application/octet-stream")
    status, kind, body = get(f"{monitor_url}/checkpoints/xaitest/{RUN}/2")
    assert (status, kind, body) == (200, "application/octet-stream", b"weights")


def test_run_api_passes_the_scores_through(monitor_url):
    document = api(monitor_url, f"scored/runs/{SCORED_RUN}/clients/client-0")
    scored = {image["label"]: image for image in document["gallery"]["1"]}
    assert scored[0]["degenerate"] is True and scored[1]["weak"] is True and scored[1]["cam_max"] == 0.0012
    assert (scored[2]["sanity_passed"], scored[2]["sanity_spearman"]) == (False, 0.78)
    assert scored[3]["selection"] == SELECTION and scored[0]["selection"] is None
    for label, fields in SCORED.items():
        assert scored[label]["faithfulness"] == fields["faithfulness"]
        assert scored[label]["src"] == f"/images/scored/{SCORED_RUN}/1/client-0/gradcam_class_{label}.jpg"
    # The manifest's call-wide checks sit beside the gallery, keyed the same way.
    checks = {"replacement": "noisy linear imputation (ROAD)", "sanity": SANITY}
    assert document["quality"] == {"1": checks}
    assert api(monitor_url, f"scored/runs/{SCORED_RUN}/rounds/1")["quality"] == {"client-0": checks}
    # Older manifests: the new fields are null, the old ones as before.
    (old,) = [image for image in document["gallery"]["2"] if image["label"] == 2]
    new_fields = ("weak", "faithfulness", "sanity_spearman", "sanity_passed", "selection", "sample_sha256")
    assert all(old[name] is None for name in new_fields)
    assert (old["predicted_class"], old["method"], old["degenerate"]) == (2, "Grad-CAM", False)


def test_images_and_logs_are_streamed_from_the_store(monitor_url, filled_store):
    status, kind, body = get(f"{monitor_url}/images/xaitest/{RUN}/2/client-1/gradcam_class_7.jpg")
    assert status == 200 and kind == "image/jpeg"
    assert body == filled_store.get(f"xaitest/runs/{RUN}/round-002/client-1/gradcam_class_7.jpg")
    assert decode_jpeg(body).shape[2] == 3
    filled_store.put(f"xaitest/runs/{RUN}/logs/supernode-0.log", b"INFO started\n", "text/plain")
    status, kind, body = get(f"{monitor_url}/logs/xaitest/{RUN}/supernode-0")
    assert status == 200 and kind.startswith("text/plain") and body == b"INFO started\n"
    assert "supernode-0" in json.loads(get(f"{monitor_url}/api/tasks/xaitest/runs/{RUN}")[2])["logs"]


@pytest.mark.parametrize(
    "path",
    [
        "/tasks/unknown",
        "/tasks/xaitest/runs/unknown",
        "/api/tasks/unknown/runs",
        "/api/tasks/xaitest/runs/unknown",
        "/tasks/..%2F..%2Fetc",
        f"/images/xaitest/{RUN}/9/client-0/gradcam_class_7.jpg",
        f"/images/xaitest/{RUN}/1/client-9/gradcam_class_7.jpg",
        f"/images/xaitest/{RUN}/1/client-0/explanations.json",
        f"/images/xaitest/{RUN}/1/client-0/..%2F..%2Fmetrics.json",
        f"/images/xaitest/{OLD_RUN}/1/client-0/gradcam_class_7.jpg",
        "/images/xaitest/..%2Fadhoc/1/me/gradcam_class_7.jpg",
        f"/images/..%2F..%2F..%2Fetc/{RUN}/1/client-0/gradcam_class_7.jpg",
        f"/manifests/xaitest/{RUN}/1/..%2F..",
        f"/logs/xaitest/{RUN}/..%2F..%2Fmetrics",
        f"/logs/xaitest/{RUN}/explainer",
        "/static/..%2F..%2Fapp.py",
        "/nothing/here",
    ],
)
def test_unknown_things_and_escapes_are_404_pages(monitor_url, path):
    status, kind, body = get(f"{monitor_url}{path}")
    assert status == 404
    if not path.startswith("/static"):
        assert kind.startswith("text/html") and b"<h1>404</h1>" in body


def test_every_answer_carries_the_security_headers(monitor_url):
    for path in ("/", f"/api/tasks/xaitest/runs/{RUN}", f"/images/xaitest/{RUN}/1/client-0/gradcam_class_7.jpg", "/x"):
        request = urllib.request.Request(f"{monitor_url}{path}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                headers = response.headers
        except urllib.error.HTTPError as error:
            with error:
                headers = error.headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer", path
        assert "script-src 'self'" in headers["Content-Security-Policy"], path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_nothing_is_writable(monitor_url, method, filled_store):
    before = [info.key for info in filled_store.list()]
    status, _, _ = get(f"{monitor_url}/tasks/xaitest/runs/{RUN}", method=method)
    assert status == 405
    assert [info.key for info in filled_store.list()] == before


def test_a_monitor_on_a_missing_folder_creates_nothing(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("fedxai")), "monitor", "--output-dir", str(missing)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and f"output folder {missing} does not exist" in result.stderr
    assert not missing.exists()


class _Dom(HTMLParser):
    """Collects the elements the checks need: their attributes, text and nesting."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.parents: list[int | None] = []
        self.texts: list[list[str]] = []
        self._open: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parents.append(self._open[-1] if self._open else None)
        self.texts.append([])
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in self.VOID:
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag: str) -> None:
        if any(self.elements[i][0] == tag for i in self._open):
            while self.elements[self._open.pop()][0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        for index in self._open:
            self.texts[index].append(data)

    def find(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [self.elements[i][1] for i in self.nodes(tag, **wanted)]

    def nodes(self, tag: str, inside: int | None = None, **wanted: str) -> list[int]:
        """Indices of the elements with that tag and attributes (within element `inside`)."""
        return [
            i
            for i, (t, a) in enumerate(self.elements)
            if t == tag and all(a.get(k) == v for k, v in wanted.items()) and (inside is None or self.within(i, inside))
        ]

    def within(self, index: int, ancestor: int) -> bool:
        parent = self.parents[index]
        while parent is not None and parent != ancestor:
            parent = self.parents[parent]
        return parent == ancestor

    def text(self, index: int) -> str:
        return "".join(self.texts[index])

    def badges(self, figure: int) -> list[tuple[str, str]]:
        spans = self.nodes("span", inside=figure)
        return [(self.text(i), self.elements[i][1]["class"]) for i in spans if "badge" in self.elements[i][1]["class"]]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RHO = "\N{GREEK SMALL LETTER RHO}"
BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=15000",
]  # fmt: skip


def dump_dom(url: str, profile: Path) -> _Dom:
    """The page's DOM once its scripts have run, as headless Chromium serialises it."""
    assert CHROMIUM is not None
    command = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url]
    dom = _Dom()
    dom.feed(subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout)
    return dom


def screenshot(url: str, name: str, profile: Path, height: int = 2600) -> Path:
    """A full-page screenshot, kept as a CI artifact."""
    assert CHROMIUM is not None
    artifacts = Path(os.environ.get("FEDXAI_TEST_ARTIFACTS", profile.parent))
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / name
    flags = [f"--user-data-dir={profile}", f"--screenshot={path}", f"--window-size=1400,{height}"]
    subprocess.run([CHROMIUM, *BROWSER_FLAGS, *flags, url], capture_output=True, timeout=120, check=True)
    assert path.stat().st_size > 10_000
    return path


def cells_of(dom: _Dom, row: int) -> list[str]:
    return [dom.text(c) for c in dom.nodes("td", inside=row)]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_in_a_real_browser(monitor_url, tmp_path):
    url = f"{monitor_url}/tasks/xaitest/runs/{RUN}?overlay={OLD_RUN}"
    dom = dump_dom(url, tmp_path / "profile")
    (accuracy,) = dom.find("canvas", id="accuracy-chart")
    (loss,) = dom.find("canvas", id="loss-chart")
    assert accuracy["data-points"] == loss["data-points"] == "3"  # rounds 1-2, and round 3 of the overlaid run
    assert accuracy["data-series"] == f"global,clients (mean),global, run {OLD_RUN},clients, run {OLD_RUN}"
    assert (accuracy["data-y-title"], loss["data-y-title"]) == ("accuracy (%)", "loss (cross-entropy)")
    (facts,) = dom.nodes("dl", id="facts")
    terms = [dom.text(i) for i in dom.nodes("dt", inside=facts)]
    values = [dom.text(i) for i in dom.nodes("dd", inside=facts)]
    facts_shown = dict(zip(terms, values, strict=True))
    assert facts_shown["duration"] == "2 min 5 s" and facts_shown["seconds per round"] == "41.5 s (median)"
    assert facts_shown["global accuracy"] == "90.0% (before training 10.0%)" and facts_shown["clients"] == "2"
    assert facts_shown["model"] == "mnist_cnn on mnist"
    (settings,) = dom.nodes("table", id="settings")
    assert ["local-epochs", "1"] in [cells_of(dom, row) for row in dom.nodes("tr", inside=settings)]

    (gallery,) = dom.find("div", id="gallery")
    assert (gallery["data-round"], gallery["data-client"]) == ("1", "client-0")
    heatmaps = dom.find("img", **{"class": "heatmap"})
    in_gallery = [img for img in heatmaps if img["data-section"] == "gallery"]
    assert all(f"/images/xaitest/{RUN}/1/client-0/" in img["src"] for img in in_gallery)
    assert sorted(int(img["data-label"]) for img in in_gallery) == list(range(10))
    assert all(img.get("data-loaded") == "true" for img in heatmaps), "every image was fetched and decoded"
    links = {a["href"] for a in dom.find("a", **{"class": "full-size"})}
    assert {img["src"] for img in in_gallery} <= links, "each picture opens at full size"
    (gallery_node,) = dom.nodes("div", id="gallery")
    assert len(dom.nodes("a", inside=gallery_node, href=f"/manifests/xaitest/{RUN}/1/client-0")) == 10
    assert dom.find("a", href=f"/checkpoints/xaitest/{RUN}/1")
    compared = [img for img in heatmaps if img["data-section"] == "compare"]
    assert [img["src"].split("/")[4] for img in compared] == ["1", "2"]  # one class, both rounds
    assert {img["data-label"] for img in compared} == {"0"}
    (compare,) = dom.nodes("div", id="compare")
    across = dom.nodes("figure", inside=compare)
    assert ("another sample than round 1", "badge badge-warn") in dom.badges(across[1])
    (clients,) = dom.nodes("table", id="clients-table")
    rows = dom.nodes("tr", inside=clients)[1:]
    assert [cells_of(dom, row)[:3] for row in rows] == [["client-0", "85.0%", "0.400"], ["client-1", "85.0%", "0.400"]]
    assert [cells_of(dom, row)[-1] for row in rows] == ["", "not drawn to explain this round (1 of 2 were)"]
    (body,) = dom.nodes("body")
    assert not {"undefined", "NaN", "null"} & set(dom.text(body).split())
    screenshot(url, "monitor-run-page.png", tmp_path / "profile")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_at_ten_clients_and_fifty_rounds(monitor_url, tmp_path):
    url = f"{monitor_url}/tasks/big/runs/{BIG_RUN}"
    dom = dump_dom(url, tmp_path / "profile")
    (clients,) = dom.nodes("table", id="clients-table")
    rows = dom.nodes("tr", inside=clients)[1:]
    assert len(rows) == len(BIG_CLIENTS), "one round at a time, the latest first"
    notes = {cells_of(dom, row)[0]: cells_of(dom, row)[-1] for row in rows}
    assert notes[LOW_CLIENT] == "accuracy outlier" and notes["client-0"] == ""
    assert notes[CRASHED[0]] == "did not train: ClientApp stopped responding."
    (chart,) = dom.find("canvas", id="client-chart")
    assert f"{LOW_CLIENT} (outlier)" in chart["data-series"].split(",")
    assert chart["data-points"] == str(BIG_ROUNDS) and chart["data-y-title"] == "evaluation accuracy (%)"
    (alerts,) = dom.nodes("p", id="client-alerts")
    text = dom.text(alerts)
    assert dom.text(alerts).count("client-") == 3, "one line per client and kind of alert, not one per round"
    outlier = "client-7: an outlier in rounds 1\N{EN DASH}50; in round 50 at 62.0%"
    assert f"{outlier} against the other clients' median 95.4%." in text
    assert "client-9: no evaluation in round 30." in text
    assert "client-3: did not train in rounds 49\N{EN DASH}50; in round 50: ClientApp stopped responding." in text
    (note,) = dom.nodes("p", id="gallery-note")
    assert dom.text(note) == "This run trained without explanations: there are no heatmaps."
    (controls,) = dom.find("p", id="gallery-controls")
    assert "hidden" in controls, "no empty drop-downs"
    (accuracy,) = dom.find("canvas", id="accuracy-chart")
    assert accuracy["data-points"] == str(BIG_ROUNDS), "from round 1: the untrained model does not squash the axis"
    assert dom.find("a", href="#heatmaps"), "the gallery is one click away"
    screenshot(url, "monitor-big-run.png", tmp_path / "profile")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_says_why_a_run_failed_and_when_one_went_stale(monitor_url, tmp_path):
    dom = dump_dom(f"{monitor_url}/tasks/troubled/runs/{FAILED_RUN}", tmp_path / "profile")
    (note,) = dom.nodes("p", id="state-note")
    assert dom.text(note).startswith("The run failed: RuntimeError: no trainer answered.")
    assert dom.text(note).endswith(f"`fedxai run --resume {FAILED_RUN}` continues it after round 1.")
    (facts,) = dom.nodes("dl", id="facts")
    assert "continuedafter round 1, 2026-11-30 07:00:30 UTC" in dom.text(facts)
    dom = dump_dom(f"{monitor_url}/tasks/troubled/runs/{STALE_RUN}", tmp_path / "profile")
    (status,) = dom.find("span", id="status")
    assert status["class"] == "status-stale"
    (note,) = dom.nodes("p", id="state-note")
    assert "the aggregator stopped reporting without finishing the run" in dom.text(note)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_a_round_whose_evaluation_is_to_come_is_not_called_missing(monitor_url, tmp_path):
    dom = dump_dom(f"{monitor_url}/tasks/live/runs/{LIVE_RUN}", tmp_path / "profile")
    (status,) = dom.find("span", id="status")
    assert status["class"] == "status-running"
    (alerts,) = dom.nodes("p", id="client-alerts")
    assert "no evaluation" not in dom.text(alerts) and "no missing reply" in dom.text(alerts)
    (clients,) = dom.nodes("table", id="clients-table")
    rows = dom.nodes("tr", inside=clients)[1:]
    assert [cells_of(dom, row)[0] for row in rows] == list(CLIENTS), "round 2, the latest"
    assert [cells_of(dom, row)[-1] for row in rows] == ["its evaluation comes with the next round's training"] * 2
    assert all("flagged" not in dom.elements[row][1].get("class", "") for row in rows)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_shows_the_scores_beside_each_heatmap(monitor_url, tmp_path):
    dom = dump_dom(f"{monitor_url}/tasks/scored/runs/{SCORED_RUN}", tmp_path / "profile")
    (gallery,) = dom.nodes("div", id="gallery")
    figures = {dom.elements[i][1]["data-label"]: i for i in dom.nodes("figure", inside=gallery)}
    assert sorted(figures) == ["0", "1", "2", "3"]  # round 1, the first
    warn, info, wrong = "badge badge-warn", "badge badge-info", "badge badge-wrong"
    assert dom.badges(figures["0"]) == [
        ("no evidence (all-zero map)", warn),
        ("deletion gap +0.00, no better than random", warn),
    ]
    assert dom.badges(figures["1"]) == [("weak: peak 0.0012", warn), ("deletion gap +0.05", info)]
    assert dom.badges(figures["2"]) == [
        ("wrong prediction", wrong),
        (f"fails sanity check ({RHO} = 0.78)", warn),
        ("deletion gap +0.31", info),
    ]
    assert dom.badges(figures["3"]) == [("deletion gap +0.52", info)]
    (choice,) = dom.nodes("p", inside=figures["3"], **{"class": "selection"})
    assert dom.text(choice) == "auto chose XGrad-CAM (gap +0.52), +0.04 over Grad-CAM++; Grad-CAM +0.40"
    assert not dom.nodes("p", inside=figures["2"], **{"class": "selection"})
    (wrong_image,) = dom.find("img", **{"class": "heatmap wrong"})
    assert wrong_image["data-label"] == "2"

    # Every method's scores on the sample, the drawn one marked, with its sanity check.
    (table,) = dom.nodes("table", inside=figures["2"], **{"class": "scores"})
    rows = {dom.elements[i][1]["data-method"]: i for i in dom.nodes("tr", inside=table)[1:]}  # after the header
    cells = {method: [dom.text(c) for c in dom.nodes("td", inside=row)] for method, row in rows.items()}
    assert list(cells) == list(METHODS)
    assert cells["HiResCAM"] == ["HiResCAM ◂", "+0.31", "0.78 fails"]
    assert cells["Grad-CAM"] == ["Grad-CAM", "+0.20", "0.10"]
    gap_cell = dom.nodes("td", inside=rows["HiResCAM"])[1]
    assert dom.elements[gap_cell][1]["title"] == "MoRF AUC 0.40, LeRF AUC 0.71"
    assert dom.elements[rows["HiResCAM"]][1]["class"] == "drawn"
    (blank,) = dom.nodes("table", inside=figures["0"], **{"class": "scores"})
    assert [dom.text(c) for c in dom.nodes("td", inside=blank)][1::3] == ["+0.00 blank map"] * len(METHODS)
    (checks,) = dom.nodes("p", id="checks")
    assert "noisy linear imputation (ROAD)" in dom.text(checks) and f"HiResCAM {RHO} = 0.78 fails" in dom.text(checks)

    # Class 0 across rounds: round 2's manifest predates the scores and shows none.
    (compare,) = dom.nodes("div", id="compare")
    across = dom.nodes("figure", inside=compare)
    assert [dom.text(i) for i in dom.nodes("figcaption", inside=across[1])] == [
        "round 2: class 0: predicted 0 (99.0%), Grad-CAM"
    ]
    assert dom.badges(across[0])[0] == ("no evidence (all-zero map)", warn)
    assert dom.badges(across[1]) == [] and not dom.nodes("table", inside=across[1])
    (body,) = dom.nodes("body")
    assert not {"undefined", "NaN", "null"} & set(dom.text(body).split())
    assert all(img.get("data-loaded") == "true" for img in dom.find("img", **{"class": "heatmap"}))


def test_run_api_has_the_probe_galleries(monitor_url, filled_store):
    document = api(monitor_url, f"federated/runs/{RUN}")
    rounds = {}
    for round_number in ROUNDS:
        listed = document["explained"][str(round_number)]
        assert listed == {"clients": [], "global": True, "updates": list(FEDERATED_CLIENTS)}
        rounds[round_number] = api(monitor_url, f"federated/runs/{RUN}/rounds/{round_number}")
        assert rounds[round_number]["gallery"] == {}, "the probe set's pictures are not a client's"
        probe = rounds[round_number]["probe"]
        assert len(probe["global"]) == 10
        assert sorted(probe["updates"]) == list(FEDERATED_CLIENTS)
        assert document["metrics"]["rounds"][round_number]["comparison"]["flagged"] == ["client-3"]
    src = rounds[2]["probe"]["updates"]["client-3"][7]["src"]
    assert src == f"/images/federated/{RUN}/2/updates/client-3/gradcam_class_7.jpg"
    status, kind, jpeg = get(f"{monitor_url}{src}")
    assert status == 200 and kind == "image/jpeg"
    assert jpeg == filled_store.get(f"federated/runs/{RUN}/round-002/updates/client-3/gradcam_class_7.jpg")
    status, _, jpeg = get(f"{monitor_url}{rounds[1]['probe']['global'][0]['src']}")
    assert status == 200 and decode_jpeg(jpeg).shape[2] == 3
    manifest = rounds[2]["probe"]["updates"]["client-3"][7]["manifest"]
    assert json.loads(get(f"{monitor_url}{manifest}")[2])["subject"] == "update"
    for path in (
        f"/images/federated/{RUN}/1/updates/..%2Fglobal/gradcam_class_1.jpg",
        f"/images/federated/{RUN}/1/updates/x/y.jpg",
    ):
        assert get(f"{monitor_url}{path}")[0] == 404


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_shows_flags_and_the_probe_set(monitor_url, tmp_path):
    dom = dump_dom(f"{monitor_url}/tasks/federated/runs/{RUN}", tmp_path / "profile")
    (chart,) = dom.find("canvas", id="outlier-chart")
    assert chart["data-series"] == ",".join([*FEDERATED_CLIENTS, "flag threshold"])
    assert chart["data-points"] == "2"
    (drift,) = dom.find("canvas", id="drift-chart")
    assert drift["data-series"] == "mean over classes,largest class"
    (flags,) = dom.nodes("table", id="flags")
    rows = dom.nodes("tr", inside=flags)[1:]  # after the header
    cells = [[dom.text(c) for c in dom.nodes("td", inside=row)] for row in rows]
    assert [row[:3] for row in cells] == [["1", "client-3", "yes"], ["2", "client-3", "yes"]]
    assert all(row[8] == "left out" and set(row[3].split(", ")) <= {"1", "7"} for row in cells)
    (gallery,) = dom.nodes("div", id="probe-gallery")
    assert (dom.elements[gallery][1]["data-round"], dom.elements[gallery][1]["data-model"]) == ("1", "global")
    figures = dom.nodes("figure", inside=gallery)
    assert len(figures) == 10
    assert all(img.get("data-loaded") == "true" for img in dom.find("img", **{"data-section": "probe"}))
    (note,) = dom.nodes("p", id="probe-note")
    assert "40 images (4 per class)" in dom.text(note) and "left out of the average" in dom.text(note)
    (body,) = dom.nodes("body")
    assert not {"undefined", "NaN", "null"} & set(dom.text(body).split())
