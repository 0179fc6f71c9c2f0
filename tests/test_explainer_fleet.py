"""The explainer as a fleet: two real explainer processes on loopback behind one
gRPC target share the calls, a bad request is refused rather than retried, and
when one replica is killed in the middle of a call, the call is retried on the
other and nothing is lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedxai.channels import open_channel
from fedxai.settings import SettingsError, parse_target
from fedxai.storage import LocalStore
from fedxai.storage.layout import Folder
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from tests.conftest import free_port, wait_for_port
from tests.helpers import FEDXAI, RUN, explain_request, unlisted_pictures

pytestmark = pytest.mark.slow

EXPLAINED = re.compile(r"explained xaitest/runs/\S+/round-(\d+)/(client-\d+)")


class Replica:
    def __init__(self, store_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        command = [FEDXAI, "explainer", "--address", f"127.0.0.1:{self.port}", "--output-dir", str(store_dir)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDXAI_")}
        with log.open("wb") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)

    def explained(self) -> list[tuple[str, str]]:
        """(round, client) of every call this replica answered, from its log."""
        return [match.groups() for match in EXPLAINED.finditer(self.log.read_text(errors="replace"))]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[LocalStore, list[Replica]]]:
    store_dir = tmp_path / "store"
    replicas = [Replica(store_dir, tmp_path / f"explainer-{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            wait_for_port(replica.port, replica.process, timeout=60)
        yield LocalStore(store_dir), replicas
    finally:
        for replica in replicas:
            replica.stop()


def requests(mnist, weights: bytes, round_number: int, count: int, per_call: int) -> Iterator[pb.ExplainRequest]:
    images, labels = mnist
    for client in range(count):
        chosen = np.arange(client * per_call, (client + 1) * per_call)
        yield explain_request(images[chosen], labels[chosen], weights, round=round_number, client_id=f"client-{client}")


def test_calls_are_shared_and_a_killed_replica_loses_none(fleet, mnist, mnist_weights):
    store, replicas = fleet
    target = "ipv4:" + ",".join(f"127.0.0.1:{replica.port}" for replica in replicas)
    with open_channel(target) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        for request in requests(mnist, mnist_weights, 1, 12, per_call=40):
            assert stub.Explain(request, timeout=60).images
        # Only UNAVAILABLE is retried: a bad request fails at once, with its own status.
        (bad,) = requests(mnist, mnist_weights, 3, 1, per_call=10)
        bad.labels[:] = [99] * len(bad.labels)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Explain(bad, timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels" in raised.value.details()
    served = [len(replica.explained()) for replica in replicas]
    assert sum(served) == 12 and min(served) >= 3, f"calls per replica: {served}"

    # Round 2: the replica that takes one of the first calls is killed (SIGKILL) while it explains.
    victim, survivor = replicas
    killed = threading.Event()

    def kill_when_busy() -> None:
        while victim.process.poll() is None:
            if re.search(r"explaining \d+ samples for \S+/round-002/", victim.log.read_text(errors="replace")):
                victim.process.kill()
                killed.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_when_busy)
    watcher.start()
    with open_channel(target) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        for request in requests(mnist, mnist_weights, 2, 6, per_call=200):
            assert stub.Explain(request, timeout=120).images, "every call answered, by one replica or the other"
    watcher.join(timeout=60)
    assert killed.is_set(), "round robin gave the first replica one of the calls"
    served_in_round_2 = [client for round_number, client in victim.explained() if round_number == "002"]
    assert len(served_in_round_2) <= 1, "the killed replica finished at most the call it was in"
    assert {c for r, c in survivor.explained() if r == "002"} | set(served_in_round_2) == {
        f"client-{i}" for i in range(6)
    }
    for round_number, clients in ((1, 12), (2, 6)):
        for client in range(clients):
            folder = Folder("xaitest", RUN, round_number, "client", f"client-{client}")
            assert store.exists(folder.manifest_key), folder
    assert unlisted_pictures(store) == []


@pytest.mark.parametrize(
    ("target", "addresses"),
    [
        ("explainer:50051", [("explainer", 50051)]),
        ("dns:///explainer:50051", [("explainer", 50051)]),
        ("dns://10.0.0.2/explainer:50051", [("explainer", 50051)]),
        ("ipv4:10.0.0.2:50051,10.0.0.3:50052", [("10.0.0.2", 50051), ("10.0.0.3", 50052)]),
        ("ipv6:[::1]:50051,[::2]:50051", [("[::1]", 50051), ("[::2]", 50051)]),
    ],
)
def test_explainer_targets_name_one_address_or_replicas(target, addresses):
    assert parse_target("explainer-address", target) == addresses


@pytest.mark.parametrize("target", ["ipv4:10.0.0.2", "ipv4:10.0.0.2:50051,", "dns:///explainer", "explainer"])
def test_a_target_without_ports_is_refused_by_name(target):
    with pytest.raises(SettingsError, match="explainer-address"):
        parse_target("explainer-address", target)
