"""`fedxai explainer` as a real process: start, serve, stop on a signal, and
refuse bad configuration with a clear message before serving."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import NANIO_ACCESS_KEY, free_port, wait_for_port

FEDXAI = str(Path(sys.executable).with_name("fedxai"))


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDXAI_")}
    return {**env, **overrides}


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serves_then_stops_gracefully_on_a_signal(tmp_path, stop_signal):
    port = free_port()
    process = subprocess.Popen(
        [FEDXAI, "explainer", "--address", f"127.0.0.1:{port}"],
        env=clean_env(FEDXAI_OUTPUT_DIR=str(tmp_path / "out")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process, timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (tmp_path / "out").is_dir(), "the output folder is created at start"
        process.send_signal(stop_signal)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert f"serving on 127.0.0.1:{port} (plaintext), storage: local" in output
    assert "explainer stopped" in output


def run_fedxai(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDXAI, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_bad_boolean_setting_is_named():
    env = clean_env(
        FEDXAI_S3_ENDPOINT="127.0.0.1:9",
        FEDXAI_S3_ACCESS_KEY="a",
        FEDXAI_S3_SECRET_KEY="b",
        FEDXAI_S3_SECURE="maybe",
    )
    result = run_fedxai("explainer", "--address", "127.0.0.1:0", env=env)
    assert result.returncode == 2
    assert "FEDXAI_S3_SECURE='maybe' is not a boolean" in result.stderr


def test_missing_secret_is_named():
    result = run_fedxai("explainer", env=clean_env(FEDXAI_S3_ENDPOINT="127.0.0.1:9", FEDXAI_S3_ACCESS_KEY="a"))
    assert result.returncode == 2
    assert "FEDXAI_S3_SECRET_KEY is not" in result.stderr


def test_wrong_s3_credentials_stop_the_start(nanio_endpoint):
    env = clean_env(
        FEDXAI_S3_ENDPOINT=nanio_endpoint,
        FEDXAI_S3_ACCESS_KEY=NANIO_ACCESS_KEY,
        FEDXAI_S3_SECRET_KEY="wrong-secret",
    )
    result = run_fedxai("explainer", "--address", "127.0.0.1:0", env=env)
    assert result.returncode == 1
    assert "storage error" in result.stderr and "refused" in result.stderr
    assert "wrong-secret" not in result.stderr


def test_port_in_use_is_reported(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_fedxai(
            "explainer", "--address", f"127.0.0.1:{port}", env=clean_env(FEDXAI_OUTPUT_DIR=str(tmp_path))
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_download_mnist_leaves_a_filled_folder_alone(tmp_path):
    from tests.conftest import MNIST_DIR

    result = run_fedxai("download-mnist", str(MNIST_DIR), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert f"MNIST IDX files already in {MNIST_DIR}" in result.stdout
