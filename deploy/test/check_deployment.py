"""Checks a finished compose deployment from the host, as a user would reach it:
the bucket through the published S3 port (minio SDK), the explainer through its
published gRPC port (grpcurl, with the tokens the deployment made), a presigned
URL it hands out, and the monitoring page behind its password."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import urllib.error
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


def grpcurl(address: str, *args: str, data: str | None = None, token: str = "") -> str:
    return grpcurl_run(address, *args, data=data, token=token, check=True).stdout


def grpcurl_run(
    address: str, *args: str, data: str | None = None, token: str = "", check: bool = False
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    header = ["-H", f"authorization: Bearer {token}"] if token else []
    command = [binary, "-plaintext", *header, *(["-d", data] if data else []), address, *args]
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=30)


def monitor_get(url: str, password: str) -> bytes:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"fedxai:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, url
        return response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s3", required=True)
    parser.add_argument("--explainer", required=True)
    parser.add_argument("--monitor", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--credentials", required=True, help="folder with the deployment's tokens and password")
    args = parser.parse_args()
    secrets = {path.name: path.read_text().strip() for path in Path(args.credentials).iterdir()}
    reader, operator, password = secrets["reader.token"], secrets["operator.token"], secrets["monitor.password"]
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
    assert logs == {"flwr-run.log", "superexec.log", "superlink.log"}, logs
    accuracy = [entry["global"]["accuracy"] for entry in metrics["rounds"]]
    assert len(accuracy) == args.rounds + 1 and accuracy[-1] > accuracy[0], accuracy
    # Nothing waits in an outbox: every request reached a replica, the killed one's included.
    assert [entry["xai"]["queued"] for entry in metrics["rounds"][1:]] == [0] * args.rounds, metrics["rounds"]
    assert metrics["probe"]["queued"] == 0, metrics["probe"]

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
    # grpcurl exits with 64 + the status code: 16 UNAUTHENTICATED, 7 PERMISSION_DENIED.
    stranger = grpcurl_run(args.explainer, "fedxai.v1.Explainer/ListExplanations", data=query)
    assert stranger.returncode == 64 + 16 and "Unauthenticated" in stranger.stderr, stranger.stderr
    store = json.dumps({"task_id": "xaitest", "round": 1, "client_id": "me", "labels": [7], "store": True})
    storing = grpcurl_run(args.explainer, "fedxai.v1.Explainer/Explain", data=store, token=reader)
    assert storing.returncode == 64 + 7 and "writer role" in storing.stderr, storing.stderr
    explained = json.loads(grpcurl(args.explainer, "fedxai.v1.Explainer/ListExplanations", data=query, token=reader))
    assert len(explained["explanations"]) == images + probe_images, (len(explained["explanations"]), images)
    trainers_only = json.dumps({"task_id": "xaitest", "run_id": run, "subjects": ["SUBJECT_CLIENT_EVALUATION"]})
    explanations = json.loads(
        grpcurl(args.explainer, "fedxai.v1.Explainer/ListExplanations", data=trainers_only, token=operator)
    )["explanations"]
    assert len(explanations) == images, (len(explanations), images)
    first = explanations[0]
    with urllib.request.urlopen(first["url"], timeout=10) as response:
        assert response.read() == read(client, bucket, first["key"])
    sys.stdout.write(
        f"explainer: SERVING, strangers UNAUTHENTICATED, a reader storing PERMISSION_DENIED, "
        f"ListExplanations lists {len(explanations)} images, presigned URLs work\n"
    )

    try:
        urllib.request.urlopen(f"http://{args.monitor}/", timeout=10).close()
        raise AssertionError("the monitoring page answered without its password")
    except urllib.error.HTTPError as error:
        assert error.code == 401, error.code
    api = f"http://{args.monitor}/api/tasks/xaitest/runs/{run}"
    task = json.loads(monitor_get(api, password))
    assert task["metrics"]["status"] == "finished" and task["summary"]["state"] == "finished"
    assert sorted(task["logs"]) == ["flwr-run", "superexec", "superlink"], task["logs"]
    rounds = [json.loads(monitor_get(f"{api}/rounds/{number}", password)) for number in task["explained"]]
    shown = sum(len(images) for pictures in rounds for images in pictures["gallery"].values())
    assert shown == images, (shown, images)
    probe_shown = sum(
        len(pictures["probe"]["global"] or []) + sum(map(len, pictures["probe"]["updates"].values()))
        for pictures in rounds
    )
    assert probe_shown == probe_images, (probe_shown, probe_images)
    sample = next(iter(rounds[0]["gallery"].values()))[0]["src"]
    picture = cv2.imdecode(np.frombuffer(monitor_get(f"http://{args.monitor}{sample}", password), np.uint8), 1)
    assert picture is not None, sample
    sys.stdout.write(f"monitor: asks for its password; the run page's data lists {shown} heatmaps and serves them\n")


if __name__ == "__main__":
    main()
