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

from fedxai.storage import LocalStore
from fedxai.storage.layout import metrics_key
from services.explainer.explanations import ExplanationService, Limits
from services.monitor.app import create_app
from tests.conftest import free_port
from tests.helpers import decode_jpeg, explain_request

ROUNDS, CLIENTS = (1, 2), ("client-0", "client-1")


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory, mnist, mnist_weights) -> LocalStore:
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
    return store


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
    """Collects the attributes of the elements the checks need."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in wanted.items())]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by .ci/run")
def test_the_page_in_a_real_browser(monitor_url, tmp_path):
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
    ]  # fmt: skip
    url = f"{monitor_url}/tasks/xaitest"
    dump = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    dom = _Dom()
    dom.feed(dump)
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
    assert len(dom.find("tr")) == 1 + len(ROUNDS) * len(CLIENTS)  # header + a row per client and round

    artifacts = Path(os.environ.get("FEDXAI_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "monitor-task-page.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={screenshot}", "--window-size=1400,2600", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert screenshot.stat().st_size > 10_000
