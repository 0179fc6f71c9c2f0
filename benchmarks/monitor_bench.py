"""What the monitoring page's polls cost on a large run: a store filled with the
manifests of N clients x R rounds (each client's heatmaps, the global model's and
every update's on the probe set, ten pictures each with every method's scores, as
the explainer writes them), served by the real monitor over HTTP on loopback.

    python -m benchmarks.monitor_bench [--clients 100] [--rounds 15]    (from the repository root)

For the run's index (what the page polls every 5 s), one round's pictures and one
client's pictures across the rounds: bytes sent, without and with gzip, and the
time of a first (cold) and a repeated (cached) request.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fedxai.storage import LocalStore
from fedxai.storage.layout import Folder, metrics_key
from services.monitor.app import create_app
from tests.helpers import serving

RUN = "20261130-000000-abcd"
METHODS = ("Grad-CAM", "Grad-CAM++", "HiResCAM", "XGrad-CAM", "LayerCAM")


def manifest(folder: Folder) -> dict:
    """A manifest of ten pictures, with the fields and scores the explainer records."""
    images = [
        {
            "key": folder.class_image_key(label),
            "label": label,
            "sample_index": 17 + label,
            "sample_sha256": f"{label:064x}",
            "predicted_class": label,
            "probability": 0.77431,
            "explained_class": label,
            "method": "Grad-CAM",
            "target_layer": "relu2",
            "architecture": "mnist_cnn",
            "model_sha256": f"{folder.round:064x}",
            "cam_max": 0.0045,
            "cam_mean": 0.0011,
            "degenerate": False,
            "weak": False,
            "created_at": "2026-11-30T15:42:45+00:00",
            "faithfulness": [
                {"method": m, "morf_auc": 0.2556, "lerf_auc": 0.5118, "gap": 0.2562, "degenerate": False}
                for m in METHODS
            ],
            "sanity_spearman": -0.0338,
            "sanity_passed": True,
        }
        for label in range(10)
    ]
    sanity = {"methods": {m: {"rho": 0.1, "passed": True} for m in METHODS}, "threshold": 0.5, "samples": 40}
    return {
        "task_id": folder.task_id,
        "run_id": folder.run_id,
        "round": folder.round,
        "subject": folder.subject,
        "client_id": folder.client_id,
        "images": images,
        "replacement": "noisy linear imputation (ROAD)",
        "sanity": sanity,
    }


def fill(store: LocalStore, clients: int, rounds: int) -> int:
    names = [f"client-{i}" for i in range(clients)]
    for r in range(1, rounds + 1):
        folders = [Folder("big", RUN, r, "global")]
        folders += [Folder("big", RUN, r, subject, name) for name in names for subject in ("client", "update")]
        for folder in folders:
            store.put(folder.manifest_key, json.dumps(manifest(folder)).encode(), "application/json")
    record = {
        "task": "big",
        "run_id": RUN,
        "status": "running",
        "num_rounds": rounds,
        "started_at": "2026-11-30T00:00:00+00:00",
        "updated_at": "2026-11-30T00:00:00+00:00",
        "finished_at": None,
        "reason": None,
        "config": {},
        "rounds": [{"round": r, "global": {"accuracy": 0.9, "loss": 0.3}} for r in range(rounds + 1)],
    }
    store.put(metrics_key("big", RUN), json.dumps(record).encode(), "application/json")
    return rounds * (2 * clients + 1)


def fetch(url: str) -> tuple[int, int, float]:
    """Bytes of the answer as JSON and gzip-compressed, and the seconds it took (uncompressed)."""
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "identity"})) as response:
        body = response.read()
    seconds = time.perf_counter() - started
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})) as response:
        compressed = response.read()
    return len(body), len(compressed), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        store = LocalStore(Path(root))
        manifests = fill(store, args.clients, args.rounds)
        sys.stdout.write(f"{args.clients} clients x {args.rounds} rounds: {manifests} manifests, ")
        sys.stdout.write(f"{10 * manifests} pictures listed\n")
        sys.stdout.write(f"{'request':<28} {'JSON':>10} {'gzip':>10} {'cold':>8} {'cached':>8}\n")
        with serving(create_app(store)) as url:
            api = f"{url}/api/tasks/big/runs/{RUN}"
            for name, path in (
                ("run index (polled)", api),
                (f"round {args.rounds}", f"{api}/rounds/{args.rounds}"),
                ("client-7, every round", f"{api}/clients/client-7"),
            ):
                size, compressed, cold = fetch(path)
                cached = fetch(path)[2]
                sizes = f"{size / 1e3:>7.0f} kB {compressed / 1e3:>7.0f} kB"
                sys.stdout.write(f"{name:<28} {sizes} {cold:>7.2f}s {cached:>7.2f}s\n")


if __name__ == "__main__":
    main()
