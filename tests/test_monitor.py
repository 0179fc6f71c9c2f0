"""The monitoring page over a real HTTP server on loopback, with heatmaps made
by the explainer; checked with HTTP requests and in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import uvicorn

from fedxai.data import Dataset, probe_set
from fedxai.models import ARCHITECTURES
from fedxai.storage import LocalStore
from fedxai.storage.layout import metrics_key
from fedxai.task import TaskConfig
from fedxai.v1 import explainer_pb2 as pb
from services.aggregator.probe import RoundMaps, probe_request
from services.explainer.explanations import ExplanationService, Limits
from services.monitor.app import create_app
from tests.conftest import free_port
from tests.helpers import TRAINED_ON, decode_jpeg, explain_request, perturbed, with_flipped_outputs

ROUNDS, CLIENTS = (1, 2), ("client-0", "client-1")


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory, mnist, mnist_weights, trained_mnist_cnn) -> LocalStore:
    """Two rounds of two clients' heatmaps made by the explainer, and the run's metrics.json."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    service = ExplanationService(store, Limits(64 << 20, 1024, cached_models=4))
    images, labels = mnist
    for round_number in ROUNDS:
        for client in CLIENTS:
            request = explain_request(images[:64], labels[:64], mnist_weights, round=round_number, client_id=client)
            service.explain(request)
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
    document = {"task": "xaitest", "status": "finished", "num_rounds": 2, "updated_at": "now", "rounds": rounds}
    store.put(metrics_key("xaitest"), json.dumps(document).encode(), "application/json")
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
    probe = probe_set(Dataset(images[TRAINED_ON:], labels[TRAINED_ON:]), "", 4, seed=42)
    task = TaskConfig(task_name="federated")
    compared: dict[int, dict] = {}
    maps = RoundMaps(probe.labels, task.flag_threshold, lambda r, c: compared.setdefault(r, {}).update(c))
    arch = ARCHITECTURES["mnist_cnn"]
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
        "task": "federated",
        "status": "finished",
        "num_rounds": 2,
        "updated_at": "now",
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
    store.put(metrics_key("federated"), json.dumps(document).encode(), "application/json")


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
        "key": f"{task}/round-{round_number:03d}/client-0/gradcam_class_{label}.jpg",
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
        jpeg = store.get(f"xaitest/round-001/client-0/gradcam_class_{label}.jpg")
        for round_number in (1, 2):
            store.put(f"scored/round-{round_number:03d}/client-0/gradcam_class_{label}.jpg", jpeg, "image/jpeg")
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
        key = f"scored/round-{round_number:03d}/client-0/explanations.json"
        store.put(key, json.dumps(manifest).encode(), "application/json")
    rounds = [{"round": r, "global": {"accuracy": 0.9, "loss": 0.3}} for r in (0, 1, 2)]
    document = {"task": "scored", "status": "finished", "num_rounds": 2, "updated_at": "now", "rounds": rounds}
    store.put(metrics_key("scored"), json.dumps(document).encode(), "application/json")


@pytest.fixture(scope="module")
def monitor_url(filled_store) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(filled_store), host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("content-type", ""), error.read()


def test_index_lists_the_tasks(monitor_url):
    status, _, body = get(f"{monitor_url}/")
    assert status == 200
    assert b'href="/tasks/xaitest"' in body and b"finished" in body and b"90.0%" in body


def test_task_api_has_metrics_and_the_gallery(monitor_url):
    status, kind, body = get(f"{monitor_url}/api/tasks/xaitest")
    assert status == 200 and kind == "application/json"
    document = json.loads(body)
    assert [r["round"] for r in document["metrics"]["rounds"]] == [0, 1, 2]
    assert sorted(document["gallery"]) == ["1", "2"]
    assert sorted(document["gallery"]["1"]) == list(CLIENTS)
    assert len(document["gallery"]["2"]["client-1"]) == 10


def test_task_api_passes_the_scores_through(monitor_url):
    status, _, body = get(f"{monitor_url}/api/tasks/scored")
    assert status == 200
    document = json.loads(body)
    scored = {image["label"]: image for image in document["gallery"]["1"]["client-0"]}
    assert scored[0]["degenerate"] is True and scored[1]["weak"] is True and scored[1]["cam_max"] == 0.0012
    assert (scored[2]["sanity_passed"], scored[2]["sanity_spearman"]) == (False, 0.78)
    assert scored[3]["selection"] == SELECTION and scored[0]["selection"] is None
    for label, fields in SCORED.items():
        assert scored[label]["faithfulness"] == fields["faithfulness"]
        assert scored[label]["src"] == f"/images/scored/1/client-0/gradcam_class_{label}.jpg"
    # The manifest's call-wide checks sit beside the gallery, keyed the same way.
    assert document["quality"] == {
        "1": {"client-0": {"replacement": "noisy linear imputation (ROAD)", "sanity": SANITY}}
    }
    # Older manifests: the new fields are null, the old ones as before.
    (old,) = [image for image in document["gallery"]["2"]["client-0"] if image["label"] == 2]
    new_fields = ("weak", "faithfulness", "sanity_spearman", "sanity_passed", "selection")
    assert all(old[name] is None for name in new_fields)
    assert (old["predicted_class"], old["method"], old["degenerate"]) == (2, "Grad-CAM", False)


def test_images_are_streamed_from_the_store(monitor_url, filled_store):
    status, kind, body = get(f"{monitor_url}/images/xaitest/2/client-1/gradcam_class_7.jpg")
    assert status == 200 and kind == "image/jpeg"
    assert body == filled_store.get("xaitest/round-002/client-1/gradcam_class_7.jpg")
    assert decode_jpeg(body).shape[2] == 3


@pytest.mark.parametrize(
    "path",
    [
        "/tasks/unknown",
        "/api/tasks/unknown",
        "/tasks/..%2F..%2Fetc",
        "/images/xaitest/9/client-0/gradcam_class_7.jpg",
        "/images/xaitest/1/client-9/gradcam_class_7.jpg",
        "/images/xaitest/1/client-0/explanations.json",
        "/images/xaitest/1/client-0/..%2F..%2Fmetrics.json",
        "/images/..%2F..%2F..%2Fetc/1/client-0/gradcam_class_7.jpg",
        "/static/..%2F..%2Fapp.py",
        "/nothing/here",
    ],
)
def test_unknown_things_and_escapes_are_404_pages(monitor_url, path):
    status, kind, body = get(f"{monitor_url}{path}")
    assert status == 404
    if not path.startswith("/static"):
        assert kind.startswith("text/html") and b"<h1>404</h1>" in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_nothing_is_writable(monitor_url, method, filled_store):
    before = [info.key for info in filled_store.list()]
    status, _, _ = get(f"{monitor_url}/tasks/xaitest", method=method)
    assert status == 405
    assert [info.key for info in filled_store.list()] == before


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


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_in_a_real_browser(monitor_url, tmp_path):
    flags = [*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    url = f"{monitor_url}/tasks/xaitest"
    dom = dump_dom(url, tmp_path / "profile")
    (accuracy,) = dom.find("canvas", id="accuracy-chart")
    (loss,) = dom.find("canvas", id="loss-chart")
    assert accuracy["data-points"] == loss["data-points"] == "3"  # rounds 0, 1 and 2
    assert accuracy["data-series"] == "global (server),federated (clients)"
    (gallery,) = dom.find("div", id="gallery")
    assert (gallery["data-round"], gallery["data-client"]) == ("1", "client-0")
    heatmaps = dom.find("img", **{"class": "heatmap"})
    in_gallery = [img for img in heatmaps if img["data-section"] == "gallery"]
    assert all("/images/xaitest/1/client-0/" in img["src"] for img in in_gallery)
    assert sorted(int(img["data-label"]) for img in in_gallery) == list(range(10))
    assert all(img.get("data-loaded") == "true" for img in heatmaps), "every image was fetched and decoded"
    compared = [img for img in heatmaps if img["data-section"] == "compare"]
    assert [img["src"].split("/")[3] for img in compared] == ["1", "2"]  # one class, both rounds
    assert {img["data-label"] for img in compared} == {"0"}
    (clients,) = dom.nodes("table", id="clients")
    assert len(dom.nodes("tr", inside=clients)) == 1 + len(ROUNDS) * len(CLIENTS)  # header + one per client and round

    artifacts = Path(os.environ.get("FEDXAI_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "monitor-task-page.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={screenshot}", "--window-size=1400,2600", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert screenshot.stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_shows_the_scores_beside_each_heatmap(monitor_url, tmp_path):
    dom = dump_dom(f"{monitor_url}/tasks/scored", tmp_path / "profile")
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


def test_task_api_has_the_probe_galleries(monitor_url, filled_store):
    status, _, body = get(f"{monitor_url}/api/tasks/federated")
    assert status == 200
    document = json.loads(body)
    assert document["gallery"] == {}, "the probe set's pictures are not a client's"
    for round_number in ROUNDS:
        probe = document["probe"][str(round_number)]
        assert len(probe["global"]) == 10
        assert sorted(probe["updates"]) == list(FEDERATED_CLIENTS)
        assert document["metrics"]["rounds"][round_number]["comparison"]["flagged"] == ["client-3"]
    src = document["probe"]["2"]["updates"]["client-3"][7]["src"]
    assert src == "/images/federated/2/updates/client-3/gradcam_class_7.jpg"
    status, kind, jpeg = get(f"{monitor_url}{src}")
    assert status == 200 and kind == "image/jpeg"
    assert jpeg == filled_store.get("federated/round-002/updates/client-3/gradcam_class_7.jpg")
    status, _, jpeg = get(f"{monitor_url}{document['probe']['1']['global'][0]['src']}")
    assert status == 200 and decode_jpeg(jpeg).shape[2] == 3
    for path in ("/images/federated/1/updates/..%2Fglobal/gradcam_class_1.jpg", "/images/federated/1/updates/x/y.jpg"):
        assert get(f"{monitor_url}{path}")[0] == 404


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_shows_flags_and_the_probe_set(monitor_url, tmp_path):
    dom = dump_dom(f"{monitor_url}/tasks/federated", tmp_path / "profile")
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
