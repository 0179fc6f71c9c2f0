"""Shared fixtures: real MNIST digits, a trained model, real servers on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from fedxai.mnist import load_split
from fedxai.models import architectures
from fedxai.settings import ExplainerSettings, S3Settings
from fedxai.storage import LocalStore
from fedxai.tensors import encode_state_dict
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.explainer.server import RunningServer, create_server
from tests.helpers import TRAINED_ON

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("FEDXAI_TEST_MNIST_DIR", REPO_ROOT.parent / "shared" / "data" / "mnist"))
MESSAGE_LIMIT = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
]


@pytest.fixture(scope="session")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST test split: (10000, 28, 28) uint8 images and labels."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST IDX files not found in {MNIST_DIR} (set FEDXAI_TEST_MNIST_DIR)")
    return load_split(MNIST_DIR, "test")


@pytest.fixture(scope="session")
def trained_mnist_cnn(mnist: tuple[np.ndarray, np.ndarray]) -> torch.nn.Module:
    """mnist_cnn trained on 6,000 digits to at least 95% on the 4,000 it never saw:
    a confident model, the state in which explanations go wrong (blank maps)."""
    images, labels = mnist
    arch = architectures()["mnist_cnn"]
    torch.manual_seed(0)
    model = arch.factory()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.from_numpy(images).float()[:, None] / 255.0 - arch.mean[0]) / arch.std[0]
    y = torch.from_numpy(labels)
    model.train()
    order = torch.randperm(TRAINED_ON)
    for start in range(0, TRAINED_ON, 32):
        batch = order[start : start + 32]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[TRAINED_ON:]).argmax(dim=1) == y[TRAINED_ON:]).float().mean().item()
    assert accuracy >= 0.95, f"the shared model reached only {accuracy:.1%} on held-out digits"
    return model


@pytest.fixture(scope="session")
def mnist_weights(trained_mnist_cnn: torch.nn.Module) -> bytes:
    return encode_state_dict(trained_mnist_cnn.state_dict(), {"architecture": "mnist_cnn"})


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    store.check()
    return store


@pytest.fixture
def explainer(local_store: LocalStore) -> Iterator[RunningServer]:
    running = create_server(ExplainerSettings(address="127.0.0.1:0", max_batch_size=256), local_store)
    yield running
    running.stop(grace=None)


@pytest.fixture
def stub(explainer: RunningServer) -> Iterator[pb_grpc.ExplainerStub]:
    with grpc.insecure_channel(f"127.0.0.1:{explainer.port}", options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.ExplainerStub(channel)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback: wide S3 coverage, accepts any credentials."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


NANIO_ACCESS_KEY = "fedxai-test"
NANIO_SECRET_KEY = "fedxai-test-secret-key"


def start_nanio(port: int, data_dir: Path) -> subprocess.Popen:
    """nanio serving ``data_dir`` on 127.0.0.1:``port``, once it listens."""
    env = {**os.environ, "NANIO_ACCESS_KEY": NANIO_ACCESS_KEY, "NANIO_SECRET_KEY": NANIO_SECRET_KEY}
    nanio = Path(sys.executable).with_name("nanio")
    arguments = ["--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    process = subprocess.Popen([str(nanio), "serve", *arguments, "--log-level", "warning", "--no-access-log"], env=env)
    wait_for_port(port, process)
    return process


@pytest.fixture(scope="session")
def nanio_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nanio on loopback: checks SigV4 signatures and presigned-URL expiry."""
    port = free_port()
    process = start_nanio(port, tmp_path_factory.mktemp("nanio"))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_settings(endpoint: str, bucket: str, *, secret_key: str = NANIO_SECRET_KEY) -> S3Settings:
    return S3Settings(endpoint=endpoint, access_key=NANIO_ACCESS_KEY, secret_key=secret_key, bucket=bucket)
