"""Request builders shared by the explainer tests."""

from __future__ import annotations

import contextlib
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import uvicorn

from fedxai.data import Dataset, Pool
from fedxai.storage import ObjectStore, read_document
from fedxai.task import TaskConfig
from fedxai.tensors import tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb

TRAINED_ON = 6000  # digits of the MNIST test split the shared model learns; the rest are held out
RUN = "20261130-090000-ab12"  # the run the tests' requests belong to
RUN_DIR = f"xaitest/runs/{RUN}"  # its folder in the store

FEDXAI = str(Path(sys.executable).with_name("fedxai"))


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """The ASGI ``app`` served by uvicorn on loopback; yields its base URL."""
    from tests.conftest import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def digits_pool(held_out: Dataset) -> Pool:
    """A pool of which the aggregator holds ``held_out``: what a probe set is drawn from."""
    return Pool(held_out, held_out, tuple(str(digit) for digit in range(10)))


def task_config(**settings: object) -> TaskConfig:
    """The default task (pyproject.toml) with ``settings`` by field name, in the tests' run."""
    from services.cli.tasks import build_task, default_app_dir

    overrides = {"run-id": RUN, **{TaskConfig.key(name): value for name, value in settings.items()}}
    return build_task(default_app_dir(), overrides)


def explain_request(images: np.ndarray, labels: np.ndarray, weights: bytes, **fields: object) -> pb.ExplainRequest:
    """An Explain request for (N, 28, 28) uint8 digits and an inline mnist_cnn."""
    request = pb.ExplainRequest(
        task_id="xaitest",
        run_id=RUN,
        round=1,
        client_id="client-0",
        inline_model=pb.InlineModel(architecture="mnist_cnn", safetensors=weights),
        tensor=tensor_to_proto(np.ascontiguousarray(images[:, None])),
        labels=[int(label) for label in labels],
        store=True,
    )
    for name, value in fields.items():
        if isinstance(value, pb.Tensor | pb.InlineModel | pb.ModelRef | pb.EncodedImages | pb.Normalization):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    picture = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None, "not a decodable JPEG"
    return picture


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """The model's weights with noise of ``scale`` times each tensor's spread: an
    honest client's update differs a little from the others'."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: value + scale * value.std() * torch.randn(value.shape, generator=generator)
        for name, value in model.state_dict().items()
    }


def with_flipped_outputs(model: torch.nn.Module, a: int = 1, b: int = 7) -> dict[str, torch.Tensor]:
    """The model with the outputs of classes ``a`` and ``b`` swapped: what a client
    that trains with those labels swapped ends up with."""
    state = {name: value.clone() for name, value in model.state_dict().items()}
    for name in ("fc2.weight", "fc2.bias"):
        state[name][[a, b]] = state[name][[b, a]]
    return state


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def inflating_png(width: int, height: int, inflated_bytes: int) -> bytes:
    """A grey PNG that declares width x height but whose pixel data inflates to ``inflated_bytes``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * inflated_bytes, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def safetensors_with_header(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def unlisted_pictures(store: ObjectStore, prefix: str = "") -> list[str]:
    """Pictures under ``prefix`` that no manifest lists: what a failed call would leave."""
    keys = {info.key for info in store.list(prefix)}
    listed = set()
    for key in keys:
        if key.endswith("/explanations.json"):
            listed |= {entry["key"] for entry in (read_document(store, key) or {}).get("images", [])}
    return sorted(key for key in keys if key.endswith(".jpg") and key not in listed)
