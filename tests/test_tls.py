"""TLS with certificates from deploy/make-dev-certs.sh: the explainer, its health
check, the trainers' link, and a federation through a TLS SuperLink."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from fedxai.channels import open_channel
from fedxai.settings import ExplainerSettings, SettingsError
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.explainer.server import create_server
from tests.conftest import REPO_ROOT
from tests.helpers import FEDXAI, RUN, RUN_DIR


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / "make-dev-certs.sh"), str(directory)], check=True)
    return directory


@pytest.fixture
def tls_explainer(certs, local_store):
    settings = ExplainerSettings(
        address="127.0.0.1:0", tls_cert_file=str(certs / "server.crt"), tls_key_file=str(certs / "server.key")
    )
    running = create_server(settings, local_store)
    yield running
    running.stop(grace=None)


def test_explainer_serves_tls_to_clients_that_trust_the_ca(tls_explainer, certs):
    with open_channel(f"localhost:{tls_explainer.port}", str(certs / "ca.crt")) as channel:
        assert pb_grpc.ExplainerStub(channel).GetInfo(pb.GetInfoRequest(), timeout=10).version
    with open_channel(f"localhost:{tls_explainer.port}") as plaintext, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.ExplainerStub(plaintext).GetInfo(pb.GetInfoRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_command_over_tls(tls_explainer, certs):
    address = f"127.0.0.1:{tls_explainer.port}"
    ok = subprocess.run(
        [FEDXAI, "health", "--address", address, "--tls-ca-file", str(certs / "ca.crt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout
    plain = subprocess.run([FEDXAI, "health", "--address", address], capture_output=True, text=True, check=False)
    assert plain.returncode == 1


def test_certificate_and_key_go_together(certs):
    with pytest.raises(SettingsError, match="go together"):
        ExplainerSettings(tls_cert_file=str(certs / "server.crt"))


def test_trainers_deliver_over_tls(tls_explainer, certs, local_store, trained_mnist_cnn, mnist, tmp_path):
    from fedxai.data import Dataset
    from fedxai.delivery import Outbox, deliver
    from fedxai.models import architectures
    from services.trainer.explainer_link import build_request

    images, labels = mnist
    request = build_request(
        task_id="xaitest",
        run_id=RUN,
        round_number=1,
        client_id="client-0",
        arch=architectures()["mnist_cnn"],
        model=trained_mnist_cnn,
        data=Dataset(images[:100], labels[:100]),
        per_class=1,
        cam_method="CAM_METHOD_GRAD_CAM",
    )
    address = f"localhost:{tls_explainer.port}"
    delivery = deliver(address, 30, Outbox(tmp_path / "outbox"), request, ca_file=str(certs / "ca.crt"))
    assert (delivery.sent, delivery.stored) == (1, 10)
    assert local_store.exists(f"{RUN_DIR}/round-001/client-0/explanations.json")


@pytest.mark.slow
def test_aggregator_runs_a_federation_through_a_tls_superlink(certs, tmp_path):
    import json
    import os

    from tests.conftest import MNIST_DIR, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDXAI_", "FLWR_"))}
    aggregator = subprocess.Popen(
        [
            FEDXAI, "aggregator", "--address", f"127.0.0.1:{port}", "--rounds", "2", "--no-xai",
            "--data-dir", str(MNIST_DIR), "--set", "max-samples=1000", "--set", "min-train-nodes=1",
            "--set", "min-evaluate-nodes=1", "--set", "fraction-evaluate=0.5", "--output-dir", str(tmp_path / "out"),
            "--work-dir", str(tmp_path / "work"),
            "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-file", str(certs / "ca.crt"),
        ],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # `fedxai trainer`: its SuperNode reaches the SuperLink through the trainer's relay, which
    # verifies the SuperLink's certificate with the SuperNode's --root-certificates.
    supernode = subprocess.Popen(
        [
            FEDXAI, "trainer", "--", "--superlink", f"127.0.0.1:{port}",
            "--root-certificates", str(certs / "ca.crt"), "--host", "127.0.0.1", "--port", str(free_port()),
            "--node-config", f"partition-id=0 num-partitions=1 state-dir='{tmp_path / 'node'}'",
        ],
        env={**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        output = aggregator.communicate(timeout=300)[0]
    finally:
        aggregator.kill()
        os.killpg(supernode.pid, 9)
        supernode.wait()
    assert aggregator.returncode == 0, output
    assert "round 1/2  global accuracy" in output and "round 2/2  global accuracy" in output
    (metrics,) = (tmp_path / "out" / "xaitest" / "runs").glob("*/metrics.json")
    document = json.loads(metrics.read_text())
    assert document["status"] == "finished" and f"done: run {document['run_id']}, 2 rounds," in output
    logs = sorted(path.name for path in (metrics.parent / "logs").iterdir())
    assert logs == ["flwr-run.log", "superexec.log", "superlink.log"], "the aggregator keeps its processes' logs"
    # Not every node evaluates every round (fraction-evaluate): each round has its own evaluation message.
    for entry in document["rounds"][1:]:
        assert entry["evaluated_in_round"] == entry["round"]
        assert set(entry["clients"]["client-0"]) == {"train", "evaluate"}
