"""Only known callers, each within its role: a real explainer on loopback with a
callers file made by `fedxai credentials`, a real S3 server, a real monitoring page."""

from __future__ import annotations

import base64
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedxai.channels import open_channel
from fedxai.delivery import Outbox, deliver
from fedxai.settings import ExplainerSettings, SettingsError
from fedxai.storage.s3 import S3Store
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.cli.credentials import MONITOR_PASSWORD_FILE, MONITOR_USER, make_credentials
from services.explainer.auth import Callers
from services.explainer.server import RunningServer, create_server
from services.monitor.app import create_app
from tests.conftest import CHANNEL_OPTIONS, s3_settings
from tests.helpers import FEDXAI, RUN, explain_request, serving

TRAINERS = ["client-0", "client-1"]


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("credentials")
    make_credentials(directory, TRAINERS)
    return directory


@pytest.fixture(scope="module")
def s3_store(nanio_endpoint: str) -> S3Store:
    store = S3Store(s3_settings(nanio_endpoint, "fedxai-auth"))
    store.check()
    return store


@pytest.fixture(scope="module")
def guarded(credentials: Path, s3_store: S3Store) -> Iterator[RunningServer]:
    settings = ExplainerSettings(address="127.0.0.1:0", callers_file=str(credentials / "callers.toml"))
    running = create_server(settings, s3_store)
    yield running
    running.stop(grace=None)


def token(credentials: Path, name: str) -> str:
    return (credentials / f"{name}.token").read_text().strip()


def call(server: RunningServer, method: str, request: object, token: str = "") -> object:
    with open_channel(f"127.0.0.1:{server.port}", token=token, options=CHANNEL_OPTIONS) as channel:
        return getattr(pb_grpc.ExplainerStub(channel), method)(request, timeout=60)


def refused(server: RunningServer, method: str, request: object, token: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(server, method, request, token)
    return raised.value


@pytest.fixture(scope="module")
def request_of(mnist, mnist_weights):
    images, labels = mnist

    def build(**fields: object) -> pb.ExplainRequest:
        return explain_request(images[:64], labels[:64], mnist_weights, **fields)

    return build


def test_strangers_are_unauthenticated_and_health_stays_open(guarded, request_of, credentials):
    calls = [
        ("Explain", request_of()),
        ("ListExplanations", pb.ListExplanationsRequest(task_id="xaitest")),
        ("GetInfo", pb.GetInfoRequest()),
    ]
    for method, request in calls:
        for presented in ("", "not-a-token", token(credentials, "reader") + "x"):
            error = refused(guarded, method, request, presented)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method, presented)
            assert "authorization" in error.details()
    # A raw header that is not a bearer token is refused the same way.
    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.ExplainerStub(channel).GetInfo(
                pb.GetInfoRequest(), metadata=[("authorization", f"Basic {token(credentials, 'reader')}")], timeout=10
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fedxai.v1.Explainer"), timeout=10
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert call(guarded, "GetInfo", pb.GetInfoRequest(), token(credentials, "reader")).version


def test_a_reader_lists_and_explains_but_cannot_store(guarded, request_of, credentials, s3_store):
    reader = token(credentials, "reader")
    error = refused(guarded, "Explain", request_of(client_id="client-0"), reader)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith("store:") and "writer" in error.details()
    assert not s3_store.list("xaitest/")

    inline = call(guarded, "Explain", request_of(store=False), reader)
    assert len(inline.images) == 10 and all(image.jpeg and not image.key for image in inline.images)


def test_a_trainer_stores_its_own_evaluations_only(guarded, request_of, credentials, s3_store):
    trainer = token(credentials, "client-0")
    for fields, field in [
        ({"client_id": "client-1"}, "client_id"),
        ({"client_id": "client-0", "subject": pb.SUBJECT_CLIENT_UPDATE}, "subject"),
        ({"client_id": "", "subject": pb.SUBJECT_GLOBAL_MODEL}, "subject"),
    ]:
        error = refused(guarded, "Explain", request_of(**fields), trainer)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, fields
        assert error.details().startswith(f"{field}:"), error.details()
    assert not s3_store.list("xaitest/runs/")

    stored = call(guarded, "Explain", request_of(client_id="client-0"), trainer)
    assert len(stored.images) == 10
    # Keys, but no presigned URLs: those are for readers.
    assert all(image.key and not image.url for image in stored.images)
    assert refused(guarded, "ListExplanations", pb.ListExplanationsRequest(), trainer).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )

    listed = call(
        guarded,
        "ListExplanations",
        pb.ListExplanationsRequest(task_id="xaitest", run_id=RUN),
        token(credentials, "reader"),
    )
    assert len(listed.explanations) == 10
    with urllib.request.urlopen(listed.explanations[0].url, timeout=10) as response:
        assert response.read() == s3_store.get(listed.explanations[0].key)


def test_the_aggregator_stores_any_subject(guarded, request_of, credentials, s3_store):
    aggregator = token(credentials, "aggregator")
    reply = call(guarded, "Explain", request_of(client_id="", subject=pb.SUBJECT_GLOBAL_MODEL), aggregator)
    assert reply.manifest_key == f"xaitest/runs/{RUN}/round-001/global/explanations.json"
    assert s3_store.exists(reply.manifest_key)


def test_delivery_with_a_wrong_token_keeps_the_request_queued(guarded, request_of, credentials, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    address = f"127.0.0.1:{guarded.port}"
    request = request_of(client_id="client-1", round=2)
    wrong = deliver(address, 60, outbox, request, token=token(credentials, "client-0"))
    assert (wrong.sent, wrong.queued, wrong.rejected) == (0, 1, 0)
    right = deliver(address, 60, outbox, token=token(credentials, "client-1"))
    assert (right.sent, right.stored, right.queued) == (1, 10, 0)


def test_callers_files_are_checked_at_start(tmp_path):
    digest = "0" * 64
    broken = {
        "not toml [": "not TOML",
        "[other]\nx = 1": "expected [callers.<name>]",
        f'[callers.a]\nroles = ["admin"]\ntoken_sha256 = "{digest}"': "roles must list",
        '[callers.a]\nroles = ["reader"]\ntoken_sha256 = "abc"': "64 lowercase hex",
        f'[callers.a]\nroles = ["reader"]\nclient_id = "c"\ntoken_sha256 = "{digest}"': "binds a writer",
        f'[callers.a]\nroles = ["writer"]\nclient_id = "../x"\ntoken_sha256 = "{digest}"': "client_id",
        f'[callers.a]\nroles = ["reader"]\ntoken = "x"\ntoken_sha256 = "{digest}"': "unknown key 'token'",
        f'[callers.a]\nroles = ["reader"]\ntoken_sha256 = "{digest}"\n[callers.b]\nroles = ["writer"]\n'
        f'token_sha256 = "{digest}"': "share a token",
    }
    for text, message in broken.items():
        with pytest.raises(SettingsError, match=re.escape(message)):
            Callers.parse(text, "callers.toml")
    path = tmp_path / "callers.toml"
    path.write_text(next(iter(broken)))
    result = subprocess.run(
        [FEDXAI, "explainer", "--address", "127.0.0.1:0", "--callers-file", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "not TOML" in result.stderr


def test_other_machines_are_served_only_with_callers_or_on_purpose(credentials):
    with pytest.raises(SettingsError, match="--callers-file"):
        ExplainerSettings(address="0.0.0.0:50051")
    ExplainerSettings(address="0.0.0.0:50051", callers_file=str(credentials / "callers.toml"))
    ExplainerSettings(address="0.0.0.0:50051", allow_unauthenticated=True)
    ExplainerSettings(address="[::1]:50051")
    result = subprocess.run(
        [FEDXAI, "monitor", "--address", "0.0.0.0:0"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2 and "--password-file" in result.stderr


def test_credentials_are_made_once_and_kept_private(credentials, tmp_path):
    names = ["aggregator", *TRAINERS, "reader", "operator"]
    for name in names:
        assert (credentials / f"{name}.token").stat().st_mode & 0o777 == 0o600
    tokens = {(credentials / f"{name}.token").read_text() for name in names}
    assert len(tokens) == len(names)
    with pytest.raises(SettingsError, match="exists"):
        make_credentials(credentials, TRAINERS)
    kept = subprocess.run(
        [FEDXAI, "credentials", str(credentials), "--trainer", "client-0", "--keep-existing"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert kept.returncode == 0 and "kept" in kept.stdout
    assert {(credentials / f"{name}.token").read_text() for name in names} == tokens
    with pytest.raises(SettingsError, match="another caller"):
        make_credentials(tmp_path / "other", ["reader"])


def test_the_monitoring_page_asks_for_its_password(credentials, local_store):
    password = (credentials / MONITOR_PASSWORD_FILE).read_text().strip()
    with serving(create_app(local_store, MONITOR_USER, password)) as url:

        def status(path: str, user: str | None, secret: str = password) -> tuple[int, Message]:
            request = urllib.request.Request(url + path)
            if user is not None:
                encoded = base64.b64encode(f"{user}:{secret}".encode()).decode()
                request.add_header("Authorization", f"Basic {encoded}")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.headers
            except urllib.error.HTTPError as error:
                with error:
                    return error.code, error.headers

        for path in ("/", "/api/tasks", "/static/style.css", "/logs/xaitest/x/y"):
            code, headers = status(path, None)
            assert code == 401 and headers["WWW-Authenticate"].startswith("Basic "), path
            assert headers["X-Frame-Options"] == "DENY"
            assert status(path, MONITOR_USER, password + "x")[0] == 401
            assert status(path, "someone", password)[0] == 401
        assert status("/", MONITOR_USER)[0] == 200
        assert status("/static/style.css", MONITOR_USER)[0] == 200
