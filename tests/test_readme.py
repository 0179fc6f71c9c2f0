"""The README's copy-paste commands, run as written against real servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from fedxai.channels import open_channel
from fedxai.settings import ExplainerSettings
from fedxai.storage.layout import global_model_key
from fedxai.storage.s3 import S3Store
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.cli.credentials import make_credentials
from services.explainer.server import RunningServer, create_server
from tests.conftest import CHANNEL_OPTIONS, NANIO_ACCESS_KEY, NANIO_SECRET_KEY, REPO_ROOT, s3_settings
from tests.helpers import RUN, RUN_DIR, decode_jpeg, explain_request, png

README = (REPO_ROOT / "README.md").read_text()


def block_after(heading: str, language: str) -> str:
    """The first fenced block of ``language`` after ``heading``."""
    section = README[README.index(heading) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block after {heading!r}"
    return match.group(1)


@pytest.fixture
def guarded_explainer(local_store, tmp_path) -> Iterator[tuple[RunningServer, Path]]:
    """An explainer that checks its callers, as compose runs it."""
    credentials = tmp_path / "credentials"
    make_credentials(credentials, ["client-0"])
    settings = ExplainerSettings(address="127.0.0.1:0", callers_file=str(credentials / "callers.toml"))
    running = create_server(settings, local_store)
    yield running, credentials
    running.stop(grace=None)


def test_grpcurl_commands(guarded_explainer, local_store, mnist, mnist_weights, tmp_path):
    explainer, credentials = guarded_explainer
    images, labels = mnist
    assert labels[0] == 7
    local_store.put(global_model_key("xaitest", RUN, 1), mnist_weights, "application/octet-stream")
    token = (credentials / "operator.token").read_text().strip()
    with open_channel(f"127.0.0.1:{explainer.port}", token=token, options=CHANNEL_OPTIONS) as channel:
        request = explain_request(images[:20], labels[:20], mnist_weights)
        pb_grpc.ExplainerStub(channel).Explain(request, timeout=60)  # something to list
    (tmp_path / "digit.png").write_bytes(png(images[0]))

    script = block_after("### grpcurl", "sh").replace("127.0.0.1:50051", f"127.0.0.1:{explainer.port}")
    script = re.sub(r"^RUN=\S+$", f"RUN={RUN}", script, count=1, flags=re.M)
    # The README reads the operator's token from compose; here it is the one just made.
    script, found = re.subn(r"^TOKEN=.+$", f"TOKEN={token}", script, count=1, flags=re.M)
    assert found == 1
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for expected in ("fedxai.v1.Explainer", "rpc Explain", '"status": "SERVING"', f"{RUN_DIR}/round-001/client-0/"):
        assert expected in result.stdout
    assert '"degenerate": false' in result.stdout, "-emit-defaults shows false fields"
    assert '"key": "xaitest/adhoc/round-001/me/gradcam_class_7.jpg"' in result.stdout
    assert decode_jpeg(local_store.get("xaitest/adhoc/round-001/me/gradcam_class_7.jpg")).shape[2] == 3


def test_python_sdk_lines(nanio_endpoint, tmp_path, monkeypatch):
    store = S3Store(s3_settings(nanio_endpoint, "fedxai"))
    store.check()
    key = f"{RUN_DIR}/round-001/client-0/gradcam_class_7.jpg"
    ok, jpeg = cv2.imencode(".jpg", np.full((28, 28, 3), 128, np.uint8))
    assert ok
    store.put(key, jpeg.tobytes(), "image/jpeg")

    code = (
        block_after("### Getting the images out of MinIO", "python")
        .replace('"localhost:9000"', f'"{nanio_endpoint}"')
        .replace('access_key="fedxai"', f'access_key="{NANIO_ACCESS_KEY}"')
        .replace('secret_key="fedxai-dev-secret"', f'secret_key="{NANIO_SECRET_KEY}"')
    )
    code = re.sub(r'^run = "[^"]+"', f'run = "{RUN}"', code, count=1, flags=re.M)
    assert len([line for line in code.splitlines() if line.strip()]) == 4
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "gradcam_class_7.jpg").read_bytes() == jpeg.tobytes()
