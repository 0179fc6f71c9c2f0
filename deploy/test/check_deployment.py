"""Checks a finished compose deployment from the host, as a user would reach it:
the bucket through the published S3 port (minio SDK), the explainer through its
published gRPC port (grpcurl), and a presigned URL it hands out."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from minio import Minio


def env_defaults() -> dict[str, str]:
    pairs = {}
    for line in (Path(__file__).resolve().parents[1] / ".env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def read(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket_name=bucket, object_name=key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def grpcurl(address: str, *args: str, data: str | None = None) -> str:
    binary = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    command = [binary, "-plaintext", *(["-d", data] if data else []), address, *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s3", required=True)
    parser.add_argument("--explainer", required=True)
    parser.add_argument("--monitor", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    args = parser.parse_args()
    env = env_defaults()
    bucket = env["FEDXAI_S3_BUCKET"]
    client = Minio(args.s3, access_key=env["MINIO_ROOT_USER"], secret_key=env["MINIO_ROOT_PASSWORD"], secure=False)

    # One run of the default task, in its own folder.
    listed = {o.object_name for o in client.list_objects(bucket_name=bucket, prefix="xaitest/", recursive=True)}
    (run,) = {key.split("/")[2] for key in listed if key.startswith("xaitest/runs/") and key.endswith("/metrics.json")}
    base = f"xaitest/runs/{run}"
    assert not [key for key in listed if not key.startswith(f"{base}/")], "everything of the run is in its folder"
    metrics = json.loads(read(client, bucket, f"{base}/metrics.json"))
    assert (metrics["status"], metrics["run_id"]) == ("finished", run), metrics["status"]
    logs = {key.rsplit("/", 1)[1] for key in listed if key.startswith(f"{base}/logs/")}
    assert logs == {"flwr-run.log", "superlink.log"}, logs
    accuracy = [entry["global"]["accuracy"] for entry in metrics["rounds"]]
    assert len(accuracy) == args.rounds + 1 and accuracy[-1] > accuracy[0], accuracy

    images = 0
    for round_number in range(1, args.rounds + 1):
        checkpoint = read(client, bucket, f"{base}/round-{round_number:03d}/global_model.safetensors")
        sha256 = hashlib.sha256(checkpoint).hexdigest()
        assert metrics["rounds"][round_number]["checkpoint_sha256"] == sha256, round_number
        for client_number in range(args.clients):
            prefix = f"{base}/round-{round_number:03d}/client-{client_number}"
            manifest = json.loads(read(client, bucket, f"{prefix}/explanations.json"))
            labels = [entry["label"] for entry in manifest["images"]]
            assert labels == list(range(10)), (prefix, labels)
            # The trainer named the stored checkpoint of the model it evaluated.
            assert {entry["model_sha256"] for entry in manifest["images"]} == {sha256}, prefix
            for label in labels:
                picture = cv2.imdecode(
                    np.frombuffer(read(client, bucket, f"{prefix}/gradcam_class_{label}.jpg"), np.uint8),
                    cv2.IMREAD_COLOR,
                )
                assert picture is not None and picture.shape[1] > picture.shape[0], (prefix, label)
            images += len(labels)
        # The aggregator explained the global model and every update on its probe set.
        for folder in ["global", *(f"updates/client-{number}" for number in range(args.clients))]:
            manifest = json.loads(read(client, bucket, f"{base}/round-{round_number:03d}/{folder}/explanations.json"))
            assert [entry["label"] for entry in manifest["images"]] == list(range(10)), (round_number, folder)
        compared = metrics["rounds"][round_number]["comparison"]
        assert sorted(compared["clients"]) == [f"client-{number}" for number in range(args.clients)], compared
    probe_images = args.rounds * (1 + args.clients) * 10
    sys.stdout.write(
        f"bucket: run {run} finished, accuracy {accuracy}, {images} heatmaps, {probe_images} of the probe set, "
        f"logs {sorted(logs)}\n"
    )

    check = '{"service": "fedxai.v1.Explainer"}'
    health = json.loads(grpcurl(args.explainer, "grpc.health.v1.Health/Check", data=check))
    assert health == {"status": "SERVING"}, health
    query = json.dumps({"task_id": "xaitest", "run_id": run})
    explained = json.loads(grpcurl(args.explainer, "fedxai.v1.Explainer/ListExplanations", data=query))
    assert len(explained["explanations"]) == images + probe_images, (len(explained["explanations"]), images)
    trainers_only = json.dumps({"task_id": "xaitest", "run_id": run, "subjects": ["SUBJECT_CLIENT_EVALUATION"]})
    explanations = json.loads(grpcurl(args.explainer, "fedxai.v1.Explainer/ListExplanations", data=trainers_only))[
        "explanations"
    ]
    assert len(explanations) == images, (len(explanations), images)
    first = explanations[0]
    with urllib.request.urlopen(first["url"], timeout=10) as response:
        assert response.read() == read(client, bucket, first["key"])
    sys.stdout.write(f"explainer: SERVING, ListExplanations lists {len(explanations)} images, presigned URLs work\n")

    with urllib.request.urlopen(f"http://{args.monitor}/api/tasks/xaitest/runs/{run}", timeout=10) as response:
        task = json.loads(response.read())
    assert task["metrics"]["status"] == "finished" and task["summary"]["state"] == "finished"
    assert sorted(task["logs"]) == ["flwr-run", "superlink"], task["logs"]
    shown = sum(len(images) for clients in task["gallery"].values() for images in clients.values())
    assert shown == images, (shown, images)
    probe_shown = sum(
        len(probe["global"]) + sum(map(len, probe["updates"].values())) for probe in task["probe"].values()
    )
    assert probe_shown == probe_images, (probe_shown, probe_images)
    sample = next(iter(next(iter(task["gallery"].values())).values()))[0]["src"]
    with urllib.request.urlopen(f"http://{args.monitor}{sample}", timeout=10) as response:
        assert response.headers["content-type"] == "image/jpeg"
    sys.stdout.write(f"monitor: the run page's data lists {shown} heatmaps and serves them\n")


if __name__ == "__main__":
    main()
