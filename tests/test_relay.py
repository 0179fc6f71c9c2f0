"""The relays between Flower's processes and the SuperLink (services/relay.py): a
trainer's passes every Fleet API request on as it came, holds an empty pull until a message
arrives, and a pull of an object until its upload is complete; the ServerApps' does the
same for a pull of an object through the Runtime API. Against Flower's own
SuperLink for the protocol, and against a Fleet API on loopback that queues a message when
the test says, for what the relay does in between."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse, Reconnect
from flwr.proto.message_pb2 import Message, Metadata, PullObjectRequest, PullObjectResponse
from flwr.proto.node_pb2 import Node
from flwr.supercore.constant import SUPERLINK_DEFAULT_CLIENT_ADDRESS
from flwr.supernode.fleet_http_connection import http_request_response

from services.cli import federation
from services.cli.federation import flower_env, start_superlink
from services.cli.processes import Children
from services.relay import (
    EAGER,
    FIRST_PAUSE,
    FLEET_HELD,
    LONGEST_PAUSE,
    OBJECT_PATH,
    PULL_PATH,
    RUNTIME_HELD,
    RUNTIME_OBJECT_PATH,
    Relay,
    SuperLinkFlags,
)
from tests.conftest import free_port

PROTOBUF = {"content-type": "application/protobuf", "flwr-timestamp": "2026-12-03T10:00:00", "x-signature": "c2ln"}


class FleetAPI(ThreadingHTTPServer):
    """Answers pulls with nothing until ``queue`` is called, an object's pull (through the
    Fleet or the Runtime API) with "not available yet" until ``upload`` is called, other
    paths with ``answers``; keeps every request it got."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.queued: bytes | None = None
        self.uploaded: bytes | None = None
        self.answers: dict[str, tuple[int, bytes]] = {}
        super().__init__(("127.0.0.1", port), _FleetAPIHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def queue(self, message_id: str) -> None:
        message = Message(metadata=Metadata(message_id=message_id, message_type="train"))
        self.queued = PullMessagesResponse(messages_list=[message]).SerializeToString()

    def upload(self, content: bytes) -> None:
        self.uploaded = content

    def pulls(self, of: str = PULL_PATH) -> int:
        return sum(path == of for _, path, _, _ in self.requests)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _FleetAPIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FleetAPI

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.command, self.path, dict(self.headers.items()), body))
        if self.path in self.server.answers:
            status, answer = self.server.answers[self.path]
        elif self.path == PULL_PATH:
            status, answer = 200, self.server.queued or PullMessagesResponse().SerializeToString()
        elif self.path in (OBJECT_PATH, RUNTIME_OBJECT_PATH):
            content = self.server.uploaded
            pulled = PullObjectResponse(object_found=True, object_available=content is not None, object_content=content)
            status, answer = 200, pulled.SerializeToString()
        else:
            status, answer = 404, b"no such path"
        self.send_response(status)
        self.send_header("Content-Type", "application/protobuf")
        self.send_header("X-Answered-By", "fleet-api")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fleet_api() -> Iterator[FleetAPI]:
    api = FleetAPI()
    yield api
    api.stop()


def start_relay(port: int, hold: float) -> Relay:
    relay = Relay(SuperLinkFlags.parse(["--insecure", "--superlink", f"127.0.0.1:{port}"]), FLEET_HELD, hold=hold)
    relay.start()
    return relay


@pytest.fixture
def relay(fleet_api: FleetAPI) -> Iterator[Relay]:
    relay = start_relay(fleet_api.server_address[1], hold=10.0)
    yield relay
    relay.close()


def pull(relay: Relay) -> httpx.Response:
    body = PullMessagesRequest(node=Node(node_id=7)).SerializeToString()
    return httpx.post(f"http://127.0.0.1:{relay.port}{PULL_PATH}", content=body, headers=PROTOBUF, timeout=30)


def test_a_pull_that_finds_nothing_is_held_until_the_superlink_has_a_message(fleet_api, relay):
    threading.Timer(1.0, fleet_api.queue, ["next-round"]).start()
    answer = pull(relay)
    assert answer.status_code == 200
    (message,) = PullMessagesResponse.FromString(answer.content).messages_list
    assert message.metadata.message_id == "next-round"
    assert fleet_api.pulls() > 2, "the relay asked again while the SuperLink had nothing"
    # Every ask is the SuperNode's own request: its body and its signed headers.
    asks = [(headers, body) for _, path, headers, body in fleet_api.requests if path == PULL_PATH]
    assert all(body == asks[0][1] and body for _, body in asks)
    assert all(headers["flwr-timestamp"] == PROTOBUF["flwr-timestamp"] for headers, _ in asks)
    assert all(headers["x-signature"] == "c2ln" for headers, _ in asks)
    assert answer.headers["x-answered-by"] == "fleet-api"


def test_a_pull_that_finds_nothing_for_the_whole_hold_is_answered_empty(fleet_api):
    relay = start_relay(fleet_api.server_address[1], hold=1.0)
    try:
        started = time.monotonic()
        answer = pull(relay)
        held = time.monotonic() - started
    finally:
        relay.close()
    assert answer.status_code == 200
    assert not PullMessagesResponse.FromString(answer.content).messages_list
    assert held >= 1.0 - LONGEST_PAUSE
    # Within its first EAGER seconds, a hold asks every FIRST_PAUSE (the asks take time too).
    assert EAGER > 1.0 and fleet_api.pulls() >= 0.5 * 1.0 / FIRST_PAUSE


def pull_object(relay: Relay) -> httpx.Response:
    body = PullObjectRequest(node=Node(node_id=7), run_id=1, object_id="model").SerializeToString()
    return httpx.post(f"http://127.0.0.1:{relay.port}{OBJECT_PATH}", content=body, headers=PROTOBUF, timeout=30)


def test_an_object_still_uploading_is_held_until_it_is_available(fleet_api, relay):
    # Without the hold, Flower's SuperNode waits 1 s before it asks again for the model that
    # the aggregator is still uploading.
    model = os.urandom(4_800_000)
    threading.Timer(0.5, fleet_api.upload, [model]).start()
    started = time.monotonic()
    answer = pull_object(relay)
    held = time.monotonic() - started
    pulled = PullObjectResponse.FromString(answer.content)
    assert (answer.status_code, pulled.object_available, pulled.object_content == model) == (200, True, True)
    assert fleet_api.pulls(OBJECT_PATH) > 2, "the relay asked again while the upload was not complete"
    assert held >= 0.5


def test_an_object_the_superlink_does_not_know_is_passed_on_at_once(fleet_api, relay):
    fleet_api.answers[OBJECT_PATH] = (200, PullObjectResponse(object_found=False).SerializeToString())
    answer = pull_object(relay)
    assert not PullObjectResponse.FromString(answer.content).object_found
    assert fleet_api.pulls(OBJECT_PATH) == 1


def test_the_serverapps_relay_holds_a_reply_part_still_uploading_and_no_other_answer(fleet_api):
    # `fedxai superexec`'s relay: a ServerApp that pulls a reply the SuperNode has registered
    # but not uploaded in full gets the part once it is in, not after Flower's 1 s wait.
    flags = SuperLinkFlags.parse(
        ["--insecure", "--runtime-api-address", f"127.0.0.1:{fleet_api.server_address[1]}"], "--runtime-api-address"
    )
    relay = Relay(flags, RUNTIME_HELD, hold=10.0)
    relay.start()
    part = os.urandom(300)
    threading.Timer(0.3, fleet_api.upload, [part]).start()
    request = PullObjectRequest(node=Node(node_id=0), run_id=1, object_id="reply").SerializeToString()
    try:
        started = time.monotonic()
        answer = httpx.post(
            f"http://127.0.0.1:{relay.port}{RUNTIME_OBJECT_PATH}", content=request, headers=PROTOBUF, timeout=30
        )
        held = time.monotonic() - started
        # The ServerApp asks for replies again itself: an empty pull of messages passes on at once,
        # as does a Fleet API pull, which is not this relay's to hold.
        fleet_api.answers["/v1/runtime/pull-messages"] = (200, b"")
        empty = httpx.post(f"http://127.0.0.1:{relay.port}/v1/runtime/pull-messages", content=b"", timeout=30)
        fleet = pull(relay)
    finally:
        relay.close()
    pulled = PullObjectResponse.FromString(answer.content)
    assert (answer.status_code, pulled.object_available, pulled.object_content) == (200, True, part)
    assert held >= 0.3 and fleet_api.pulls(RUNTIME_OBJECT_PATH) > 2
    assert (empty.status_code, empty.content) == (200, b"") and fleet_api.pulls("/v1/runtime/pull-messages") == 1
    assert fleet.status_code == 200 and fleet_api.pulls() == 1


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (401, b'{"code": 1, "message": "node not recognised"}'),
        (503, b"superlink stopping"),
        (200, PullMessagesResponse(reconnect=Reconnect(reconnect=5)).SerializeToString()),
        (200, b"\xff\xff not protobuf"),
    ],
)
def test_a_pull_answered_with_an_error_or_a_reconnect_is_passed_on_at_once(fleet_api, relay, status, answer):
    fleet_api.answers[PULL_PATH] = (status, answer)
    relayed = pull(relay)
    assert (relayed.status_code, relayed.content) == (status, answer)
    assert fleet_api.pulls() == 1


def test_other_requests_pass_through_once_byte_for_byte(fleet_api, relay):
    model_part = os.urandom(4_800_000)  # an object the size of the model, as a reply's push carries it
    fleet_api.answers["/v1/fleet/push-object"] = (200, b"\x08\x01")
    answer = httpx.post(
        f"http://127.0.0.1:{relay.port}/v1/fleet/push-object", content=model_part, headers=PROTOBUF, timeout=30
    )
    assert (answer.status_code, answer.content) == (200, b"\x08\x01")
    ((method, path, headers, body),) = fleet_api.requests
    assert (method, path, body == model_part) == ("POST", "/v1/fleet/push-object", True)
    assert {name: headers[name] for name in PROTOBUF} == PROTOBUF
    unknown = httpx.post(f"http://127.0.0.1:{relay.port}/v1/fleet/nothing-here", content=b"x", timeout=30)
    assert (unknown.status_code, unknown.content) == (404, b"no such path")


def test_a_superlink_that_cannot_be_reached_is_a_502_and_the_relay_serves_once_it_is_back():
    port = free_port()
    relay = start_relay(port, hold=1.0)
    try:
        down = httpx.post(f"http://127.0.0.1:{relay.port}/v1/fleet/get-run", content=b"x", timeout=30)
        # Flower's client tries a 502 again, as it does a SuperLink it cannot reach.
        assert down.status_code == 502 and b"SuperLink unreachable" in down.content
        fleet_api = FleetAPI(port)
        try:
            fleet_api.queue("after-the-outage")
            answer = pull(relay)
        finally:
            fleet_api.stop()
    finally:
        relay.close()
    assert PullMessagesResponse.FromString(answer.content).messages_list[0].metadata.message_id == "after-the-outage"


def test_a_request_without_a_length_is_refused_and_the_relay_keeps_serving(fleet_api, relay):
    def chunks() -> Iterator[bytes]:
        yield b"streamed"

    refused = httpx.post(f"http://127.0.0.1:{relay.port}/v1/fleet/push-object", content=chunks(), timeout=30)
    assert refused.status_code == 411 and b"Content-Length" in refused.content
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as raw:
        raw.sendall(b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: relay\r\nContent-Length: -1\r\n\r\nbody")
        # Read to the end: the relay closes the connection, whose rest it cannot tell apart.
        answer = raw.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 411 ") and answer.endswith(b"is required\n")
    assert fleet_api.requests == []
    fleet_api.queue("still-serving")
    assert pull(relay).status_code == 200


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--insecure", "--superlink", "aggregator:9092", "--node-config", "partition-id=0", "--max-retries", "60"],
            SuperLinkFlags("aggregator:9092", True, None, ["--node-config", "partition-id=0", "--max-retries", "60"]),
        ),
        (
            ["--superlink=link.example:443", "--root-certificates=/certs/ca.crt", "--port", "9095"],
            SuperLinkFlags("link.example:443", False, "/certs/ca.crt", ["--port", "9095"]),
        ),
        # Without --superlink, Flower's default address, as the SuperNode would use it.
        (["--insecure"], SuperLinkFlags(SUPERLINK_DEFAULT_CLIENT_ADDRESS, True, None, [])),
        (["--insecure", "--superlink"], SuperLinkFlags(SUPERLINK_DEFAULT_CLIENT_ADDRESS, True, None, ["--superlink"])),
    ],
)
def test_the_superlink_flags_are_taken_from_the_supernodes_and_the_rest_passed_on(args, expected):
    assert SuperLinkFlags.parse(args) == expected


def test_the_runtime_api_flags_are_taken_from_the_superexecs():
    args = ["--root-certificates", "/certs/ca.crt", "--runtime-api-address=aggregator:9092", "--executor", "subprocess"]
    parsed = SuperLinkFlags.parse(args, "--runtime-api-address", default="")
    assert parsed == SuperLinkFlags("aggregator:9092", False, "/certs/ca.crt", ["--executor", "subprocess"])
    assert SuperLinkFlags.parse(["--insecure"], "--runtime-api-address", default="").address == ""


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[int]:
    """A SuperLink as `fedxai run` starts it, on loopback: its port."""
    env = flower_env(os.environ, tmp_path, {})
    children = Children(tmp_path, env)
    link = federation.superlink(tmp_path, env)
    try:
        start_superlink(children, link)
        yield link.port
    finally:
        children.stop_all()


def test_flowers_supernode_connection_registers_and_pulls_from_a_real_superlink_through_the_relay(superlink):
    relay = start_relay(superlink, hold=1.5)
    try:
        with http_request_response(f"127.0.0.1:{relay.port}", insecure=True, max_retries=3) as connection:
            node_id, receive = connection[0], connection[1]
            started = time.monotonic()
            pulled = receive()  # no run, no message: held, then empty
            held = time.monotonic() - started
    finally:
        relay.close()
    assert node_id > 0, "the SuperLink accepted the node's signed requests through the relay"
    assert pulled is None and held >= 1.5 - LONGEST_PAUSE
